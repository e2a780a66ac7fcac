"""Turn a recipe's data section into train / validation / test row lists."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.config import DataConfig
from tuneforge.data.readers import Row, read_records, row_where
from tuneforge.data.splits import grouped_split, plain_split, stratified_split
from tuneforge.errors import TuneforgeError


@dataclass
class Splits:
    train: list[Row]
    validation: list[Row]
    test: list[Row] | None = None
    sources: dict[str, str] = field(default_factory=dict)  # split -> file (or "train (split)")
    # Rows left out while reading leniently: split -> [(line, problem)] (data check: parse_errors).
    skipped: dict[str, list] = field(default_factory=dict)

    def items(self) -> list[tuple[str, list[Row]]]:
        """(split, rows) for each split there is: train, validation and test when given."""
        found = [("train", self.train), ("validation", self.validation)]
        return found + ([("test", self.test)] if self.test is not None else [])


Check = Callable[[list[Row], Path, str], None]


def load_splits(
    cfg: DataConfig,
    seed: int,
    *,
    check: Check | None = None,
    stratify: Callable[[Row], Any] | None = None,
    group: Callable[[Row], str] | None = None,
    skipped: dict[str, list] | None = None,
) -> Splits:
    """Read every split, `check` each file, and hold out a seeded validation set when asked.

    The hold-out is stratified by `stratify(row)` when given (class balance is kept), or keeps
    the rows of one `group(row)` together (every answer to one prompt on one side). With
    `skipped`, unparseable rows are recorded per split (split -> [(line, problem)]) instead of
    raising.
    """

    def read(path: Path, what: str) -> list[Row]:
        lenient = None if skipped is None else skipped.setdefault(what.removeprefix("data."), [])
        rows = read_records(path, what=what, skipped=lenient)
        if check is not None:
            check(rows, path, what)
        return rows

    train = read(cfg.train, "data.train")
    sources = {"train": str(cfg.train)}
    if cfg.validation is not None:
        validation = read(cfg.validation, "data.validation")
        sources["validation"] = str(cfg.validation)
    elif cfg.validation_split is not None:
        if stratify is not None:
            keys = [str(stratify(r)) for r in train]
            _require_two_per_label(train, keys, cfg.train)
            train, validation = stratified_split(
                train, keys, cfg.validation_split, seed, what="data.validation_split"
            )
        elif group is not None:
            train, validation = grouped_split(
                train,
                [group(r) for r in train],
                cfg.validation_split,
                seed,
                what="data.validation_split",
            )
        else:
            train, validation = plain_split(
                train, cfg.validation_split, seed, what="data.validation_split"
            )
        sources["validation"] = (
            f"{cfg.train} (validation_split={cfg.validation_split}, seed={seed})"
        )
    else:
        raise TuneforgeError(
            "data: no validation data",
            hint="set data.validation to a file or data.validation_split to a fraction such as 0.1",
        )
    test = read(cfg.test, "data.test") if cfg.test is not None else None
    if test is not None:
        sources["test"] = str(cfg.test)
    return Splits(train, validation, test, sources, skipped if skipped is not None else {})


def _require_two_per_label(rows: list[Row], keys: list[str], path: Path) -> None:
    """A stratified hold-out needs every label twice; name the lonely rows so they can be fixed."""
    seen: dict[str, list[Row]] = {}
    for row, key in zip(rows, keys, strict=True):
        seen.setdefault(key, []).append(row)
    single = {key: found[0] for key, found in seen.items() if len(found) < 2}
    if single:
        shown = sorted(single.items())[:10]
        where = ", ".join(f"{key!r} ({row_where(path, row)})" for key, row in shown)
        if len(single) > len(shown):
            where += f" and {len(single) - len(shown)} more"
        raise TuneforgeError(
            f"data.validation_split: cannot hold out a stratified validation set from {path}: "
            f"label(s) with a single example: {where}",
            hint="add examples of those labels, remove them, or set data.validation to a file",
        )


def resolve_data_paths(cfg: DataConfig, base: Path) -> DataConfig:
    """Relative paths are tried against the working directory first, then the recipe's folder."""
    updates = {}
    for key in ("train", "validation", "test"):
        value = getattr(cfg, key)
        if (
            value is not None
            and not value.is_absolute()
            and not value.exists()
            and (base / value).exists()
        ):
            updates[key] = base / value
    return cfg.model_copy(update=updates)


def lenient_splits(
    recipe, recipe_dir: Path, stratify=None, group=None
) -> tuple[dict[str, list], dict[str, list]]:
    """Rows per split read with broken rows skipped and recorded, split as `train` splits them."""
    cfg = resolve_data_paths(recipe.data, recipe_dir)
    splits = load_splits(cfg, recipe.training.seed, stratify=stratify, group=group, skipped={})
    return dict(splits.items()), splits.skipped
