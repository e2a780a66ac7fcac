"""Safe loading: model weights come from safetensors or GGUF, never from pickle, unless asked.

A pickle file (`pytorch_model.bin`, `*.pt`, `*.pth`, `*.ckpt`) is a program: unpickling it can run
arbitrary code. transformers already loads `.bin` files with `torch.load(weights_only=True)`, but
a folder that only has pickle weights is still refused here, with a clear message, unless the user
opts in (`--allow-pickle` on the command line, `allow_pickle: true` in a recipe); then the folder
loads with a warning.

The opt-in is process-wide (one CLI command per process); :func:`pickle_scope` restores the earlier
value so an in-process `tuneforge.train(...)` with `allow_pickle: true` does not leak it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from tuneforge.errors import TuneforgeError
from tuneforge.progress import console

SAFE_SUFFIXES = (".safetensors", ".gguf")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# Pickles a Trainer checkpoint always carries next to its safetensors weights: optimiser, scheduler,
# RNG and arguments. transformers reads them with torch.load(weights_only=True); they are not weights.
TRAINER_STATE_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "training_args.bin")

_allowed = False


def pickle_allowed() -> bool:
    return _allowed


def allow_pickle(allowed: bool = True) -> None:
    """Opt in to pickle weights for the rest of this process (or of the enclosing scope)."""
    global _allowed
    _allowed = _allowed or bool(allowed)


@contextlib.contextmanager
def pickle_scope(allowed: bool = False) -> Iterator[None]:
    """Within the block pickle weights are allowed if `allowed` (or already allowed); restored after."""
    global _allowed
    previous = _allowed
    _allowed = previous or bool(allowed)
    try:
        yield
    finally:
        _allowed = previous


def pickle_weights(folder: Path) -> list[Path]:
    """Weight files in `folder` that are pickles (trainer state files excluded)."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and p.suffix in PICKLE_SUFFIXES
        and p.name not in TRAINER_STATE_FILES
        and not p.name.startswith("rng_state")
    )


def has_safe_weights(folder: Path) -> bool:
    return any(p.suffix in SAFE_SUFFIXES for p in folder.iterdir() if p.is_file())


def check_weights(folder: Path | str, what: str) -> bool:
    """Refuse a folder whose only weights are pickles (unless allowed); True if pickles will load.

    `what` names the thing for the message: "base_model", "checkpoint", "run adapter", ...
    A folder without any weight file passes: the loader reports that itself.
    """
    folder = Path(folder)
    if not folder.is_dir() or has_safe_weights(folder):
        return False
    pickles = pickle_weights(folder)
    if not pickles:
        return False
    names = ", ".join(p.name for p in pickles[:3]) + (" ..." if len(pickles) > 3 else "")
    if not pickle_allowed():
        raise TuneforgeError(
            f"{what}: {folder} only has pickle weights ({names}); tuneforge loads safetensors or "
            "GGUF, because unpickling a file can run code hidden in it",
            hint="convert the weights to safetensors (model.save_pretrained(DIR, "
            "safe_serialization=True)), or, only for files you trust, pass --allow-pickle "
            "(recipe: allow_pickle: true)",
        )
    console.print(
        f"[yellow]warning:[/yellow] loading pickle weights from {folder} ({names}) because "
        "--allow-pickle was given: only do this for files you trust"
    )
    return True


def use_safetensors(folder: Path | str, what: str) -> bool | None:
    """The `use_safetensors` argument for `from_pretrained` on `folder`, after :func:`check_weights`."""
    return None if check_weights(folder, what) else True


def check_run(run_dir: Path | str) -> None:
    """A finished run's own weights (adapter/, model/) pass the same rule before anything loads."""
    run_dir = Path(run_dir)
    for sub, what in (("adapter", "run adapter"), ("model", "run model")):
        check_weights(run_dir / sub, what)
