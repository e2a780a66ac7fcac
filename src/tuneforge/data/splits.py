"""Seeded, stratified train/validation splits (scikit-learn does the work)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from tuneforge.errors import TuneforgeError


def stratified_split(
    rows: list[dict[str, Any]], labels: list[str], fraction: float, seed: int, *, what: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Hold out `fraction` of rows with the label proportions kept; same seed, same split."""
    from sklearn.model_selection import train_test_split  # deferred: CLI start of report (sklearn)

    counts = Counter(labels)
    single = sorted(label for label, n in counts.items() if n < 2)
    if single:
        raise TuneforgeError(
            f"{what}: cannot make a stratified validation_split: label(s) {single} have a single example",
            hint="add examples of those labels, remove them, or provide data.validation as a file",
        )
    n_val = max(round(len(rows) * fraction), len(counts))
    if n_val >= len(rows) - len(counts) + 1:
        raise TuneforgeError(
            f"{what}: validation_split={fraction} leaves too few training examples ({len(rows)} rows, "
            f"{len(counts)} labels)"
        )
    index = list(range(len(rows)))
    train_idx, val_idx = train_test_split(
        index, test_size=n_val, random_state=seed, stratify=labels
    )
    return [rows[i] for i in sorted(train_idx)], [rows[i] for i in sorted(val_idx)]


def plain_split(
    rows: list[dict[str, Any]], fraction: float, seed: int, *, what: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Seeded random hold-out for tasks without labels (generation, pretraining documents)."""
    from sklearn.model_selection import train_test_split  # deferred: CLI start of report (sklearn)

    if len(rows) < 2:
        raise TuneforgeError(
            f"{what}: need at least 2 rows to make a validation_split, got {len(rows)}"
        )
    index = list(range(len(rows)))
    n_val = max(1, round(len(rows) * fraction))
    train_idx, val_idx = train_test_split(index, test_size=n_val, random_state=seed)
    return [rows[i] for i in sorted(train_idx)], [rows[i] for i in sorted(val_idx)]


def grouped_split(
    rows: list[dict[str, Any]], groups: list[str], fraction: float, seed: int, *, what: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Seeded hold-out of whole groups (every answer to one prompt), so that no group is on both
    sides: the validation prompts are then new to the model, as in the leakage check."""
    from sklearn.model_selection import GroupShuffleSplit  # deferred: CLI start of report (sklearn)

    if len(set(groups)) < 2:
        raise TuneforgeError(
            f"{what}: need at least 2 different prompts to make a validation_split, got "
            f"{len(set(groups))}",
            hint="add prompts or provide data.validation as a file",
        )
    splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
    train_idx, val_idx = next(splitter.split(rows, groups=groups))
    return [rows[i] for i in sorted(train_idx)], [rows[i] for i in sorted(val_idx)]
