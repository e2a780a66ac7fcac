"""Recipes being edited in the dashboard: where they start (a shipped recipe or an earlier run's),
the form generated from the typed recipe schema, validation exactly as the CLI does it (the text is
written to a file and read by `config.load_recipe`: field, line, "did you mean"), and uploaded
data files. Everything lives under <tuneforge home>/ui/, in folders this module names."""

from __future__ import annotations

import hashlib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from tuneforge.config import Recipe, apply_override, load_recipe
from tuneforge.demo import PROJECT_ROOT
from tuneforge.errors import TuneforgeError
from tuneforge.ui.security import valid_upload_name

SHIPPED = PROJECT_ROOT / "recipes"
MAX_RECIPE_CHARS = 200_000
OPEN_SECTIONS = ("", "data", "training", "lora")


@dataclass(frozen=True)
class Field:
    name: str  # dotted: training.epochs
    section: str
    kind: str  # text | number | bool | choice
    choices: tuple[str, ...]
    default: Any
    help: str
    required: bool


def schema_fields(model: type[BaseModel] = Recipe, prefix: str = "") -> list[Field]:
    """Every leaf field of the recipe schema, with its documentation as help."""
    fields: list[Field] = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        args = typing.get_args(annotation)
        sub = next(
            (a for a in (annotation, *args) if isinstance(a, type) and issubclass(a, BaseModel)),
            None,
        )
        if sub is not None:
            fields += schema_fields(sub, f"{prefix}{name}.")
            continue
        choices = _literal_choices(annotation)
        if annotation is bool:
            kind = "bool"
        elif (
            choices
            and all(isinstance(c, str) for c in choices)
            and not _has_free_type(annotation)
            and typing.get_origin(annotation) is not list  # several of them: written as YAML
        ):
            kind = "choice"
        elif annotation in (int, float) or set(args) - {type(None)} <= {int, float} and args:
            kind = "number"
        else:
            kind = "text"
        default = None if info.is_required() else info.get_default(call_default_factory=True)
        fields.append(
            Field(
                f"{prefix}{name}",
                prefix.rstrip("."),
                kind,
                tuple(str(c) for c in choices),
                default,
                info.description or "",
                info.is_required(),
            )
        )
    return fields


def _literal_choices(annotation) -> list:
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    found = []
    for arg in typing.get_args(annotation):
        found += _literal_choices(arg)
    return found


def _has_free_type(annotation) -> bool:
    """A union with a Literal and a free type (int | 'auto'): typed, not chosen."""
    args = typing.get_args(annotation)
    return any(a in (int, float, str) for a in args)


def form_values(text: str) -> dict[str, str]:
    """Each field's value as the form shows it: the YAML's where it sets one, else the default."""
    try:
        raw = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError:
        raw = {}
    raw = raw if isinstance(raw, dict) else {}
    values = {}
    for f in schema_fields():
        value: Any = raw
        for part in f.name.split("."):
            value = value.get(part, _MISSING) if isinstance(value, dict) else _MISSING
        values[f.name] = scalar_text(f.default if value is _MISSING else value)
    return values


_MISSING = object()


def scalar_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str, Path)):
        return str(value)
    return yaml.safe_dump(value, default_flow_style=True).strip()


def set_field(text: str, name: str, value: str) -> str:
    """The YAML with one field set (`--set` semantics: the value is parsed as YAML); an empty
    value removes the field, so its default applies."""
    if not any(f.name == name for f in schema_fields()):
        raise TuneforgeError(f"unknown recipe field '{name}'")
    raw = _mapping(text)
    if value.strip() == "":
        parts = name.split(".")
        cursor = raw
        for part in parts[:-1]:
            cursor = cursor.get(part) if isinstance(cursor.get(part), dict) else {}
        cursor.pop(parts[-1], None)
    else:
        apply_override(raw, f"{name}={value}")
    return yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)


def _mapping(text: str) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as e:
        raise TuneforgeError(f"the recipe is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise TuneforgeError("a recipe must be a mapping of keys (name, task, data, ...)")
    return raw


class Drafts:
    """Recipe texts written where `load_recipe` and `tuneforge train` read them, by content hash
    (the same text is one file), and uploaded data files."""

    def __init__(self, home: Path) -> None:
        self.recipes = home / "recipes"
        self.uploads = home / "uploads"
        self.recipes.mkdir(parents=True, exist_ok=True)
        self.uploads.mkdir(parents=True, exist_ok=True)

    def save(self, text: str) -> Path:
        if len(text) > MAX_RECIPE_CHARS:
            raise TuneforgeError(f"the recipe is over {MAX_RECIPE_CHARS} characters")
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
        path = self.recipes / f"recipe-{digest}.yaml"
        if not path.is_file():
            path.write_text(text, encoding="utf-8")
        return path

    def validate(self, text: str) -> tuple[Path, Recipe]:
        """The saved draft and its recipe, or the CLI's TuneforgeError (file name, line, field)."""
        path = self.save(text)
        return path, load_recipe(path)

    def upload_path(self, name: str) -> Path:
        return self.uploads / valid_upload_name(name)

    def list_uploads(self) -> list[dict[str, Any]]:
        return [
            {"name": p.name, "path": str(p), "bytes": p.stat().st_size}
            for p in sorted(self.uploads.iterdir())
            if p.is_file() and not p.name.startswith(".")
        ]


def starting_points(records) -> list[dict[str, str]]:
    """Shipped recipes, then the recipes of earlier runs (newest first)."""
    found = [
        {"kind": "shipped", "key": f"shipped:{p.name}", "label": f"recipes/{p.name}"}
        for p in sorted(SHIPPED.glob("*.yaml"))
    ]
    found += [
        {"kind": "run", "key": f"run:{r.id}", "label": f"run {r.id} ({r.status})"} for r in records
    ]
    return found


def shipped_text(name: str) -> str:
    """A shipped recipe, its data paths made absolute (the draft lives elsewhere)."""
    path = SHIPPED / name
    if path.parent != SHIPPED or not path.is_file() or path.suffix != ".yaml":
        raise TuneforgeError(f"no shipped recipe '{name}'", hint="see the recipes/ folder")
    text = path.read_text(encoding="utf-8")
    return absolute_paths(text, PROJECT_ROOT, path.parent)


def absolute_paths(text: str, *bases: Path) -> str:
    """Relative data paths resolved as training resolves them (working folder first, then the
    recipe's); comments kept where nothing needed changing."""
    raw = _mapping(text)
    data = raw.get("data") if isinstance(raw.get("data"), dict) else None
    changed = False
    for key in ("train", "validation", "test"):
        value = data.get(key) if data else None
        if isinstance(value, str) and not Path(value).is_absolute():
            for base in bases:
                if (base / value).exists():
                    data[key] = str((base / value).resolve())
                    changed = True
                    break
    return yaml.safe_dump(raw, sort_keys=False, allow_unicode=True) if changed else text
