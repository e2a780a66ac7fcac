"""Checkpoints that survive a kill or a full disk.

The Trainer writes `checkpoint-N/` file by file; a kill halfway leaves a folder that looks like a
checkpoint but is not one, and `--resume` would pick it. Here the Trainer's own saving code writes
into `.tmp-checkpoint-N/checkpoint-N/` instead; every file and folder is fsync'ed, and only then is
it renamed to `checkpoint-N/`. So a `checkpoint-N/` folder is always complete, and a half-written
one keeps its temporary name, which the Trainer's `checkpoint-<step>` pattern never matches.

Before a checkpoint is written its size is estimated (saved weights, optimiser state, the files a
previous checkpoint needed) and compared with the free space: a full disk stops the run with a
clear message before anything is written, and the last good checkpoint stays as it was.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from peft import PeftModel
from transformers.trainer_utils import rotate_checkpoints

from tuneforge import safety
from tuneforge.errors import TuneforgeError
from tuneforge.files import fsync_dir, fsync_tree
from tuneforge.progress import console

STAGING_PREFIX = ".tmp-"
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"  # the Trainer writes it last: a checkpoint has it when done
# Tokenizer, config and small state files come on top of the tensors. Measured from the previous
# checkpoint when there is one; before the first, this margin stands in for them.
EXTRA_BYTES = 32 * 2**20


class NotEnoughDiskSpace(TuneforgeError):
    """Free space is below what the next write needs; nothing was written."""


# --------------------------------------------------------------------------------------------------
# Durable, atomic publication


def publish(staged: Path, final: Path) -> None:
    """Make the fully written folder `staged` appear as `final` in one rename, durably."""
    fsync_tree(staged)
    if final.exists():  # a leftover of the same step: move it out of the way, never half-delete it
        old = final.with_name(f"{STAGING_PREFIX}old-{final.name}")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        shutil.rmtree(old, ignore_errors=True)
    staged.rename(final)
    fsync_dir(final.parent)


def staging_dir(folder: Path, name: str) -> Path:
    return folder / f"{STAGING_PREFIX}{name}"


def remove_staging(folder: Path) -> list[Path]:
    """Delete half-written checkpoints (a kill during a save); returns what was removed."""
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(STAGING_PREFIX)]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints in `folder`, oldest step first."""
    if not folder.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in folder.iterdir()
        if p.is_dir() and (m := CHECKPOINT.match(p.name)) and (p / TRAINER_STATE).is_file()
    ]
    return [p for _, p in sorted(found)]


def last_good_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint; half-written ones (temporary name or no state) are ignored."""
    found = checkpoints(folder)
    return found[-1] if found else None


# --------------------------------------------------------------------------------------------------
# Disk space


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def weights_bytes(model) -> int:
    """Bytes `save_pretrained` writes for `model`: the adapter (and trained head) for PEFT, else all."""
    trainable_only = isinstance(model, PeftModel)
    return sum(
        p.numel() * p.element_size()
        for p in model.parameters()
        if p.requires_grad or not trainable_only
    )


def checkpoint_bytes(model, previous: Path | None = None) -> int:
    """Estimated size of one Trainer checkpoint of `model`.

    Weights as saved, plus AdamW's two moment tensors per trainable parameter, plus the tokenizer
    and small files (measured from `previous`, else a fixed margin). Never below `previous`'s size.
    """
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    estimate = weights_bytes(model) + 2 * trainable + EXTRA_BYTES
    if previous is not None and previous.is_dir():
        estimate = max(estimate, folder_bytes(previous))
    return estimate


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def ensure_space(path: Path, needed: int, what: str, *, resume_hint: Path | None = None) -> None:
    """Raise :class:`NotEnoughDiskSpace` if the disk holding `path` has less than `needed` free."""
    free = free_bytes(path)
    if free >= needed:
        return
    hint = "free some space on that disk or set output_dir to a larger one"
    if resume_hint is not None:
        hint += (
            f", then continue with `tuneforge train --resume {resume_hint}` (the last good "
            "checkpoint is kept as it was)"
        )
    raise NotEnoughDiskSpace(
        f"not enough disk space for {what}: needs about {human(needed)} ({needed:,} bytes), "
        f"{human(free)} ({free:,} bytes) free at {path}",
        hint=hint,
    )


def human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def resume_checkpoint(run_path: Path, *, tidy: bool = True) -> str | None:
    """The newest complete checkpoint; with `tidy` (rank 0), a half-written one (a kill during a
    save) is removed first."""
    folder = run_path / "checkpoints"
    if tidy:
        for stale in remove_staging(folder):
            console.print(f"Removed a half-written checkpoint: {stale.name}")
    last = last_good_checkpoint(folder)
    if last is None:
        return None
    safety.check_weights(last, "checkpoint")
    return str(last)


# --------------------------------------------------------------------------------------------------
# The Trainer hook


class AtomicCheckpoints:
    """Mixin for a `transformers.Trainer`: atomic, fsync'ed, space-checked `_save_checkpoint`.

    The Trainer's own `_save_checkpoint` still does all the work (weights, optimiser, scheduler,
    RNG, trainer state, stateful callbacks); only the folder it writes to is a staging folder, via
    the `_get_output_dir` hook. Afterwards the best-checkpoint path (which the Trainer looked up in
    that staging folder) is pointed at the final name, the folder is published, and old
    checkpoints are rotated as the Trainer would have.
    """

    _staging: str | None = None
    resume_hint: Path | None = None  # the run folder, named in a disk-space error

    def _get_output_dir(self, trial):
        return self._staging or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        run_dir = Path(super()._get_output_dir(trial))
        name = f"checkpoint-{self.state.global_step}"
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            # Sharded saves write from every rank into the final folder: not staged. The
            # best-checkpoint path must not depend on whether rank 0 has published yet.
            super()._save_checkpoint(model, trial)
            if self.state.best_global_step == self.state.global_step:
                self.state.best_model_checkpoint = str(run_dir / name)
            return
        staging = staging_dir(run_dir, name)
        if self.args.should_save:
            run_dir.mkdir(parents=True, exist_ok=True)
            needed = checkpoint_bytes(self.model, last_good_checkpoint(run_dir))
            ensure_space(run_dir, needed, name, resume_hint=self.resume_hint)
            shutil.rmtree(staging, ignore_errors=True)
        # Under DDP every rank saves its own RNG state (rng_state_<rank>.pth) and nothing else.
        # It goes into rank 0's staging folder, once that folder is fresh, and rank 0 publishes
        # only when all are in: written to the final folder, rank 0's publish used to drop it,
        # and a resumed run then drew other dropout masks on those ranks than the original.
        self.accelerator.wait_for_everyone()
        self._staging = str(staging)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = None
        self.accelerator.wait_for_everyone()
        staged, final = staging / name, run_dir / name
        if self.state.best_model_checkpoint == str(staged):
            self.state.best_model_checkpoint = str(final)
            if self.args.should_save:
                self.state.save_to_json(str(staged / TRAINER_STATE))
        if not self.args.should_save:
            return
        publish(staged, final)
        shutil.rmtree(staging, ignore_errors=True)
        rotate_checkpoints(
            output_dir=str(run_dir),
            save_total_limit=self.args.save_total_limit,
            best_model_checkpoint=self.state.best_model_checkpoint,
            use_mtime=True,
        )
