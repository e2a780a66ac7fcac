"""Earlier fine-tuned versions named as a base model: `run:<run id or folder>` and
`model:<name>@<stage or version>`, resolved through the registry to a finished parent run.

The recorded recipe names the parent by its folder (`run:<path>`), so `train --resume` and a later
`Run.load` start from the same version even after `model:<name>@production` has moved on.
:func:`base_source` is where every command turns a recipe's `base_model` into weights: a plain
model through `tuneforge.models`, a reference through its parent run.
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

import yaml

from tuneforge.config import Recipe, validate_recipe
from tuneforge.errors import TuneforgeError
from tuneforge.models import ModelSource, resolve_base_model
from tuneforge.paths import tuneforge_home
from tuneforge.runs import registry

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
        base = base_source(
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


def base_source(spec: str, *, trust_remote_code: bool = False, db: Path | None = None):
    """The weights a `base_model` names: a parent run's (`run:`/`model:`) or a base model's."""
    if is_reference(spec):
        return resolve(spec, db).source
    return resolve_base_model(spec, trust_remote_code=trust_remote_code)


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
