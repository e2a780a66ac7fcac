"""Data checks: what to know about a data set before spending compute on it.

Pure logic over already-read examples, so every task can feed it: counts, label balance,
duplicates (exact and normalised), train/validation/test overlap (leakage), empty / very short /
very long texts, token lengths against max_length, rows that failed to parse.
Each finding has a severity, overridable in the recipe; the defaults are those of
:class:`tuneforge.config.DataChecksConfig` (the recipe's `data_checks`, one place for both).
"""

from __future__ import annotations

import re
import statistics
import unicodedata
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from tuneforge.config import CheckSeverity as Severity
from tuneforge.config import DataChecksConfig
from tuneforge.evaluation.intervals import too_small

_DEFAULTS = DataChecksConfig()
DEFAULT_SEVERITY: dict[str, Severity] = _DEFAULTS.severities()


@dataclass(frozen=True)
class Example:
    text: str
    line: int
    label: str | None = None
    n_tokens: int | None = None
    # The whole example when `text` is only the part that must not leak between splits (a
    # preference row's prompt): duplicates are whole examples, several answers to one prompt are not.
    whole: str | None = None

    @property
    def identity(self) -> str:
        return self.text if self.whole is None else self.whole


@dataclass
class Finding:
    check: str
    severity: Severity
    message: str
    split: str | None = None
    count: int = 0
    lines: list[int] = field(default_factory=list)


@dataclass
class CheckReport:
    findings: list[Finding]
    summary: dict[str, Any]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    def to_dict(self) -> dict[str, Any]:
        return {"findings": [asdict(f) for f in self.findings], "summary": self.summary}


def normalise(text: str) -> str:
    """Case, accents, punctuation and whitespace do not make two examples different."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", "", text.lower())).strip()


def run_checks(
    splits: dict[str, list[Example]],
    *,
    max_length: int,
    severity: dict[str, Severity] | None = None,
    parse_errors: dict[str, list[tuple[int, str]]] | None = None,
    imbalance_ratio: float = _DEFAULTS.imbalance_ratio,
    short_chars: int = _DEFAULTS.short_chars,
    long_factor: float = 4.0,
    truncates: bool = True,
    detectable_difference: float | None = None,
) -> CheckReport:
    """All checks over all splits. `parse_errors`: split -> [(line, message)]. With
    `detectable_difference`, validation and test splits too small to show it are flagged."""
    sev = {**DEFAULT_SEVERITY, **(severity or {})}
    findings: list[Finding] = []

    def add(check: str, message: str, split: str | None, lines: list[int]) -> None:
        if sev.get(check, "warning") != "off":
            findings.append(
                Finding(check, sev.get(check, "warning"), message, split, len(lines), lines[:20])
            )

    for split, errors in (parse_errors or {}).items():
        if errors:
            add(
                "parse_errors",
                f"{len(errors)} row(s) could not be parsed: "
                + "; ".join(f"line {ln}: {msg}" for ln, msg in errors[:3]),
                split,
                [ln for ln, _ in errors],
            )

    summary: dict[str, Any] = {"splits": {}}
    for split, examples in splits.items():
        summary["splits"][split] = _split_summary(examples, max_length)
        _check_split(
            split,
            examples,
            max_length if truncates else None,
            add,
            imbalance_ratio,
            short_chars,
            long_factor,
        )
    _check_leakage(splits, add)
    if detectable_difference is not None:
        for split in ("validation", "test"):
            if splits.get(split):
                message = too_small(len(splits[split]), detectable_difference)
                if message:
                    add("small_evaluation", message, split, [])
    return CheckReport(findings, summary)


def _split_summary(examples: list[Example], max_length: int) -> dict[str, Any]:
    out: dict[str, Any] = {"examples": len(examples)}
    labels = [e.label for e in examples if e.label is not None]
    if labels:
        out["labels"] = dict(sorted(Counter(labels).items()))
    lengths = [e.n_tokens for e in examples if e.n_tokens is not None]
    if lengths:
        ordered = sorted(lengths)
        out["tokens"] = {
            "total": sum(lengths),
            "min": ordered[0],
            "median": statistics.median(ordered),
            "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
            "max": ordered[-1],
            "over_max_length": sum(n > max_length for n in lengths),
            "max_length": max_length,
        }
        out["lengths"] = lengths
    return out


def _check_split(
    split, examples, max_length, add, imbalance_ratio, short_chars, long_factor
) -> None:
    empty = [e.line for e in examples if not e.text.strip()]
    if empty:
        add("empty_text", f"{len(empty)} empty text(s)", split, empty)
    short = [e.line for e in examples if 0 < len(e.text.strip()) < short_chars]
    if short:
        add(
            "short_text",
            f"{len(short)} text(s) shorter than {short_chars} characters",
            split,
            short,
        )
    lengths = [e.n_tokens for e in examples if e.n_tokens is not None]
    if lengths:
        median = statistics.median(lengths)
        long = [
            e.line
            for e in examples
            if e.n_tokens is not None and median and e.n_tokens > long_factor * median
        ]
        if long:
            add(
                "long_text",
                f"{len(long)} text(s) longer than {long_factor:g}× the median length ({median:g} tokens)",
                split,
                long,
            )
        cut = [
            e.line
            for e in examples
            if max_length is not None and e.n_tokens is not None and e.n_tokens > max_length
        ]
        if cut:
            add(
                "truncation",
                f"{len(cut)} example(s) longer than max_length={max_length} tokens will be truncated",
                split,
                cut,
            )

    seen_exact: dict[str, int] = {}
    seen_norm: dict[str, int] = {}
    exact, near = [], []
    for e in examples:
        if not e.text.strip():
            continue
        key = normalise(e.identity)
        if e.identity in seen_exact:
            exact.append(e.line)
        elif key in seen_norm:
            near.append(e.line)
        seen_exact.setdefault(e.identity, e.line)
        seen_norm.setdefault(key, e.line)
    if exact:
        add("duplicates", f"{len(exact)} exact duplicate(s) of earlier rows", split, exact)
    if near:
        add(
            "duplicates",
            f"{len(near)} duplicate(s) after normalising case, accents and punctuation",
            split,
            near,
        )

    labels = Counter(e.label for e in examples if e.label is not None)
    if len(labels) >= 2:
        (top, n_top), (low, n_low) = labels.most_common()[0], labels.most_common()[-1]
        if n_low == 0 or n_top / n_low > imbalance_ratio:
            add(
                "imbalance",
                f"label imbalance: '{top}' has {n_top} examples, '{low}' only {n_low} (ratio > {imbalance_ratio:g})",
                split,
                [],
            )


def _check_leakage(splits: dict[str, list[Example]], add) -> None:
    train = splits.get("train")
    if not train:
        return
    index: dict[str, list[int]] = defaultdict(list)
    for e in train:
        if e.text.strip():
            index[normalise(e.text)].append(e.line)
    for split, examples in splits.items():
        if split == "train":
            continue
        leaked = [e.line for e in examples if e.text.strip() and normalise(e.text) in index]
        if leaked:
            add(
                "leakage",
                f"{len(leaked)} {split} example(s) also appear in train (after normalising): the {split} "
                "score would be inflated",
                split,
                leaked,
            )
