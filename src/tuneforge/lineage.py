"""Continued fine-tuning: a run that starts from an earlier fine-tuned version, not a base model.

`base_model: run:<run id or folder>` or `model:<name>@<stage or version>` resolves, through the
registry, to a finished parent run. The new run starts from the parent's weights on the same task
(a classification run also keeps the parent's label set): a LoRA parent's adapter is loaded
trainable and keeps training (PEFT `is_trainable=True`), or is merged when the new run trains
fully; a full/freeze parent's saved model becomes the new run's base.

The recorded recipe names the parent by its folder (`run:<path>`), so `train --resume` and a later
`Run.load` start from the same version even after `model:<name>@production` has moved on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tuneforge.config import Recipe, validate_recipe
from tuneforge.errors import TuneforgeError
from tuneforge.models import ModelSource, resolve_base_model
from tuneforge.paths import tuneforge_home
from tuneforge.progress import console
from tuneforge.runs import registry
from tuneforge.runs.provenance import sha256_path

PREFIXES = ("run:", "model:")


def is_reference(spec: str) -> bool:
    """True when `base_model` names an earlier run or a registered model version."""
    return spec.startswith(PREFIXES)


@dataclass(frozen=True)
class Parent:
    """The finished run a continued run starts from, with what it recorded about itself."""

    spec: str  # what the recipe said, e.g. model:sentiment@production
    run_id: str
    path: Path  # the parent's finished run folder
    model: str | None  # "name@version" when reached through model:
    task: str
    method: str
    info: dict[str, Any]  # the parent's run.json "info" (labels, field names, ...)
    recipe: Recipe  # the parent's recorded recipe
    data: dict[str, Any] = field(default_factory=dict)  # split -> {path, resolved, sha256}
    source: ModelSource | None = None  # the weights below the parent's trained part

    @property
    def pinned(self) -> str:
        return f"run:{self.path}"

    @property
    def label(self) -> str:
        return f"{self.run_id} ({self.model})" if self.model else self.run_id


# --------------------------------------------------------------------------------------------------
# Resolution


def resolve(spec: str, db: Path | None = None) -> Parent:
    """The parent run a `run:`/`model:` base_model names; a clear error listing what exists."""
    model = None
    if spec.startswith("run:"):
        ref = spec.removeprefix("run:").strip()
        if not ref:
            raise TuneforgeError(
                "base_model: 'run:' needs a run id or folder, e.g. run:runs/sentiment-20250101-120000"
            )
        folder = Path(ref).expanduser()
        if folder.is_dir():
            path, run_id, row = folder.resolve(), folder.resolve().name, None
        else:
            record = _registered_run(ref, db)
            path, run_id, row = Path(record.path), record.id, record
    else:
        name, version = _parse_model(spec)
        entry = _registered_model(name, version, db)
        model = f"{name}@{entry['version']}"
        record = _registered_run(entry["run_id"], db)
        path, run_id, row = Path(record.path), record.id, record
    meta, recipe = _finished_run(path, spec)
    data = meta.get("data") or {}
    if not data:  # runs recorded before run.json carried data hashes: the registry has them
        with contextlib.suppress(TuneforgeError):
            data = (row or registry.get_run(run_id, db)).json("data") or {}
    parent = Parent(
        spec=spec,
        run_id=run_id,
        path=path,
        model=model,
        task=meta["task"],
        method=meta["method"],
        info=meta.get("info", {}),
        recipe=recipe,
        data=data,
    )
    return replace(parent, source=_source(parent, meta))


def _parse_model(spec: str) -> tuple[str, str]:
    body = spec.removeprefix("model:").strip()
    name, _, version = body.partition("@")
    if not name.strip():
        raise TuneforgeError(
            f"base_model: '{spec}' names no model",
            hint="write model:<name>@<stage or version>, e.g. model:sentiment@production",
        )
    return name.strip(), (version.strip() or "production")


def _registered_run(ref: str, db: Path | None) -> registry.RunRecord:
    try:
        record = registry.get_run(ref, db)
    except TuneforgeError as e:
        if "ambiguous" in e.message:
            raise TuneforgeError(
                f"base_model: {e.message}", hint="give more of the run id"
            ) from None
        runs = [r for r in registry.list_runs(db) if r.status == "finished"]
        known = ", ".join(r.id for r in runs[:10]) + (
            f" and {len(runs) - 10} more" if len(runs) > 10 else ""
        )
        raise TuneforgeError(
            f"base_model: run '{ref}' is not in the registry {registry.registry_path(db)}; "
            + (f"finished runs there: {known}" if runs else "it holds no finished run"),
            hint="write run:<one of those ids> or run:<a run folder>",
        ) from None
    if record.status != "finished":
        raise TuneforgeError(
            f"base_model: run {record.id} is {record.status}; only a finished run can be continued",
            hint=f"finish it first (tuneforge train --resume {record.path})"
            if record.status == "interrupted"
            else None,
        )
    return record


def _registered_model(name: str, version: str, db: Path | None) -> dict[str, Any]:
    models = registry.list_models(db)
    names = sorted({m["name"] for m in models})
    if name not in names:
        raise TuneforgeError(
            f"base_model: no model named '{name}' in the registry {registry.registry_path(db)}; "
            + (f"registered models: {', '.join(names)}" if names else "no model is registered"),
            hint="register a finished run first: tuneforge models register NAME RUN",
        )
    try:
        return registry.model_version(name, version, db)
    except TuneforgeError:
        versions = ", ".join(f"{m['version']} ({m['stage']})" for m in models if m["name"] == name)
        what = f"version {version}" if version.isdigit() else f"no version in stage '{version}'"
        raise TuneforgeError(
            f"base_model: model '{name}' has {what}"
            + (" registered" if version.isdigit() else "")
            + f"; its versions (stage): {versions}",
            hint=f"name a version (model:{name}@1) or a stage that one holds; promote one with "
            f"tuneforge models promote {name} VERSION --stage {version if not version.isdigit() else 'production'}",
        ) from None


def _finished_run(path: Path, spec: str) -> tuple[dict[str, Any], Recipe]:
    import yaml

    missing = [f for f in ("run.json", "recipe.yaml", "metrics.json") if not (path / f).is_file()]
    if not path.is_dir() or missing:
        raise TuneforgeError(
            f"base_model: {spec}: {path} is not a finished run folder"
            + (f" ({', '.join(missing)} missing)" if path.is_dir() else " (the folder is gone)"),
            hint="continue a finished run (see `tuneforge runs list`)",
        )
    meta = json.loads((path / "run.json").read_text())
    recipe = validate_recipe(
        yaml.safe_load((path / "recipe.yaml").read_text()), source=str(path / "recipe.yaml")
    )
    weights = path / ("adapter" if meta["method"] == "lora" else "model")
    if not weights.is_dir():
        raise TuneforgeError(f"base_model: {spec}: the run {path} has no {weights.name}/ folder")
    return meta, recipe


def _source(parent: Parent, meta: dict[str, Any]) -> ModelSource:
    """The folder below what the parent trained: its base model (LoRA) or its own saved model."""
    if parent.method == "lora":
        recorded = Path(meta.get("base_model_path", ""))
        if meta.get("base_model_path") and (recorded / "config.json").is_file():
            return ModelSource(parent.spec, recorded, "run")
        base = resolve_base_model(
            parent.recipe.base_model, trust_remote_code=parent.recipe.trust_remote_code
        )
        return ModelSource(parent.spec, base.path, "run")
    return ModelSource(parent.spec, _model_with_tokenizer(parent), "run")


def _model_with_tokenizer(parent: Parent) -> Path:
    """A full/freeze run keeps its model and tokenizer in two folders; `from_pretrained` wants one.

    A cached folder of symbolic links to both (the run itself is never modified).
    """
    key = hashlib.sha256(str(parent.path).encode()).hexdigest()[:12]
    target = tuneforge_home() / "continued" / f"{parent.run_id}-{key}"
    files = [
        *sorted((parent.path / "tokenizer").glob("*")),
        *sorted((parent.path / "model").glob("*")),  # model files win a name clash
    ]
    links = {f.name: f for f in files if f.is_file()}
    if target.is_dir() and all((target / n).resolve() == f.resolve() for n, f in links.items()):
        return target
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, f in links.items():
        (tmp / name).symlink_to(f.resolve())
    shutil.rmtree(target, ignore_errors=True)
    try:
        tmp.rename(target)
    except OSError:  # another process made it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def pin(recipe: Recipe, parent: Parent) -> Recipe:
    """The recipe with base_model naming the parent's folder (what was actually continued)."""
    return recipe.model_copy(update={"base_model": parent.pinned})


# --------------------------------------------------------------------------------------------------
# Compatibility and the starting model


def check_task(parent: Parent, task: str) -> None:
    if parent.task != task:
        raise TuneforgeError(
            f"base_model: {parent.spec} is a {parent.task} run ({parent.run_id}); this recipe's "
            f"task is {task}",
            hint=f"continue a {task} run, or set task: {parent.task}",
        )


def check_labels(parent: Parent, info: dict[str, Any], data_file: str) -> None:
    """A classifier's head has one output per label: the label sets must be the same."""
    theirs, ours = parent.info.get("labels"), info.get("labels")
    if theirs is None or ours is None or list(theirs) == list(ours):
        return
    missing, extra = sorted(set(theirs) - set(ours)), sorted(set(ours) - set(theirs))
    detail = "; ".join(
        part
        for part in (
            f"missing {missing}" if missing else "",
            f"new {extra}" if extra else "",
        )
        if part
    )
    raise TuneforgeError(
        f"base_model: {parent.spec}: the parent run {parent.run_id} was trained on labels "
        f"{list(theirs)}, the new training data {data_file} has labels {list(ours)} ({detail})",
        hint="continued training keeps the classifier's labels: use data with the same label set "
        "(replay adds the parent's examples), or start from a base model to train new labels",
    )


def start_model(parent: Parent, model, recipe: Recipe, peft_task_type: str, device=None):
    """The parent's weights on top of `model` (built from `parent.source`), ready to train on
    `device` (None: the CPU)."""
    from tuneforge.methods import apply_method

    if parent.method != "lora":
        return apply_method(
            model, recipe.method, recipe.lora, recipe.freeze, peft_task_type, device
        )
    from peft import PeftModel

    adapter = parent.path / "adapter"
    keep_training = recipe.method == "lora"
    model = PeftModel.from_pretrained(model, adapter, is_trainable=keep_training)
    if keep_training:
        from tuneforge.methods.lora import speed_up_adapters

        speed_up_adapters(model, device)
        cfg = model.peft_config["default"]
        if (cfg.r, cfg.lora_alpha) != (recipe.lora.r, recipe.lora.alpha):
            console.print(
                f"[yellow]note[/yellow]: the parent's adapter keeps training with its own shape "
                f"(r={cfg.r}, alpha={cfg.lora_alpha}); the recipe's lora r={recipe.lora.r}, "
                f"alpha={recipe.lora.alpha:g} do not apply to a continued adapter"
            )
        return model
    # full or freeze on top of a LoRA parent: fold the adapter into the weights first
    model = model.merge_and_unload()
    for p in model.parameters():  # PEFT froze the base while the adapter was on it
        p.requires_grad = True
    return apply_method(model, recipe.method, recipe.lora, recipe.freeze, peft_task_type, device)


# --------------------------------------------------------------------------------------------------
# The parent's data (replay, forgetting check)


def parent_data_problems(parent: Parent) -> tuple[dict[str, Path], list[str]]:
    """The parent's train/validation files as found now, and what is wrong with them.

    A file counts as the parent's only when its content hash equals the recorded one: replaying
    or measuring on edited data would silently be about other data.
    """
    found: dict[str, Path] = {}
    problems: list[str] = []
    for split in ("train", "validation"):
        configured = getattr(parent.recipe.data, split)
        record = parent.data.get(split, {})
        if configured is None:  # validation_split: drawn from train, checked with it
            continue
        candidates = [record.get("resolved"), record.get("path"), str(configured)]
        path = next((Path(c) for c in candidates if c and Path(c).exists()), None)
        if path is None:
            problems.append(f"its {split} file {record.get('path') or configured} is gone")
            continue
        if record.get("sha256") and sha256_path(path) != record["sha256"]:
            problems.append(
                f"its {split} file {path} changed since that run (sha256 "
                f"{record['sha256'][:12]} recorded)"
            )
            continue
        found[split] = path.resolve()
    return found, problems


def load_parent_splits(parent: Parent, task, tokenizer, files: dict[str, Path]):
    """The parent's train and validation rows, read and split exactly as the parent did."""
    data = parent.recipe.data.model_copy(update={**files, "test": None})
    recipe = parent.recipe.model_copy(update={"data": data})
    try:
        return task.prepare(recipe, tokenizer, Path(".")).splits
    except TuneforgeError as e:
        raise TuneforgeError(
            f"base_model: {parent.spec}: reading the parent run's data: {e.message}", hint=e.hint
        ) from None


# --------------------------------------------------------------------------------------------------
# Display


def chain_text(chain: list[registry.RunRecord]) -> str:
    """`run -> parent -> ... -> base model`, for `runs show`."""
    parts = []
    for record in chain:
        spec = record.row.get("base_model") or ""
        parts.append(record.id + (f" [{spec}]" if is_reference(spec) else ""))
    root = chain[-1].row.get("base_model") or "?"
    if not is_reference(root):
        parts.append(f"base model {root}")
    return " -> ".join(parts)


# --------------------------------------------------------------------------------------------------
# A continued run's data: replay mixed in, the parent's validation rows kept for the forgetting check


@dataclass
class Continuation:
    """What a continued run needs beyond a normal one; built before any training."""

    parent: Parent
    prepared: Any  # the task's Prepared, replayed rows included
    parent_validation: list[dict[str, Any]] | None  # None: forgetting check skipped (see `skipped`)
    skipped: str | None = None
    replay: dict[str, Any] | None = None

    def measure(self, task, model, tokenizer, when: str) -> dict[str, Any] | None:
        """The model on the parent's validation rows, scored with the parent's settings."""
        if self.parent_validation is None:
            return None
        return task.evaluate(
            model,
            tokenizer,
            self.parent_validation,
            self.parent.info,
            self.parent.recipe,
            f"parent validation ({when})",
        )

    def forgetting(self, metric: str, before, after) -> dict[str, Any]:
        from tuneforge.evaluation.forgetting import forgetting_summary

        if before is None or after is None:
            return {"parent_run": self.parent.run_id, "skipped": self.skipped}
        return forgetting_summary(
            parent_run=self.parent.run_id,
            parent_model=self.parent.model,
            data=str(self.parent.data.get("validation", {}).get("path", "")),
            metric=metric,
            before=before,
            after=after,
        )

    def record(self) -> dict[str, Any]:
        """run.json `parent`: which version this run continued, and what it replayed."""
        return {
            "spec": self.parent.spec,
            "run_id": self.parent.run_id,
            "path": str(self.parent.path),
            "model": self.parent.model,
            "method": self.parent.method,
            "replay": self.replay,
        }


def continue_from(parent: Parent, task, recipe: Recipe, tokenizer, prepared, recipe_dir: Path):
    """Check the new data against the parent, mix in replay, load the parent's validation rows."""
    import tempfile

    from tuneforge.data.loading import Splits
    from tuneforge.data.replay import draw, mixed_recipe

    train_file = prepared.splits.sources.get("train", str(recipe.data.train))
    if not recipe.replay:
        check_labels(parent, prepared.info, train_file)
    files, problems = parent_data_problems(parent)
    if problems and recipe.replay:
        raise TuneforgeError(
            f"replay: the training data of the parent run {parent.run_id} cannot be replayed: "
            + "; ".join(problems),
            hint="restore the file(s) as they were when that run trained, or set replay: 0",
        )
    skipped = None
    parent_splits = None
    if problems:
        # The check is a measurement, not a precondition of training: warn and go on.
        skipped = f"the parent run {parent.run_id}'s data: " + "; ".join(problems)
        console.print(f"[yellow]warning[/yellow]: forgetting check skipped: {skipped}")
    else:
        parent_splits = load_parent_splits(parent, task, tokenizer, files)
    replay = None
    if recipe.replay:
        drawn = draw(
            task.name, recipe, prepared.splits, prepared.info, parent_splits.train, parent.info
        )
        with tempfile.TemporaryDirectory(prefix="tuneforge-replay-") as tmp:
            mixed = mixed_recipe(
                task.name, recipe, prepared.splits, prepared.info, drawn, Path(tmp)
            )
            merged = task.prepare(mixed, tokenizer, recipe_dir)
        source = parent.data.get("train", {}).get("path") or str(parent.recipe.data.train)
        replay = drawn.summary(parent.run_id, source)
        # Evaluation and later reads (predict, eval) use the user's own files and columns.
        for key in ("chat", "text_field", "label_field"):
            if key in prepared.info:
                merged.info[key] = prepared.info[key]
        merged.splits = Splits(
            merged.splits.train,
            prepared.splits.validation,
            prepared.splits.test,
            {
                **prepared.splits.sources,
                "replay": f"{len(drawn.rows)} rows of {source} (run {parent.run_id})",
            },
        )
        merged.info["replay"] = replay
        prepared = merged
        console.print(
            f"Replay: {len(drawn.rows)} of the parent's {drawn.available} training examples mixed "
            f"into {drawn.new_rows} new ones ({recipe.replay:g} x {drawn.new_rows}"
            + (
                f"; {drawn.left_out} left out: they equal a new validation/test example"
                if drawn.left_out
                else ""
            )
            + ")"
        )
        check_labels(parent, prepared.info, f"{train_file} (+ replay)")
    return Continuation(
        parent,
        prepared,
        parent_splits.validation if parent_splits is not None else None,
        skipped,
        replay,
    )
