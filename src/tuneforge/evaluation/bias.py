"""Counterfactual bias probe for classifiers: swap identity terms, watch the prediction move.

A fine-tuned model inherits the base model's associations. The probe fills shipped (or user)
templates with terms from one category at a time (gender, nationality, religion, age, disability)
and measures, per category, how often the predicted label changes across terms (flip rate) and,
per term, how far the probability of the template's reference label moves from the template
average (mean shift). Identity should not matter for these sentences, so both should be ~0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tuneforge.errors import TuneforgeError

Classifier = Callable[[list[str]], np.ndarray]  # texts -> probabilities (n, n_labels)


@dataclass
class ProbeSet:
    categories: dict[str, list[str]]
    templates: list[str]


def load_probe_set(extra: Path | None = None) -> ProbeSet:
    """The shipped terms and templates, extended (not replaced) by a user's YAML file."""
    shipped = yaml.safe_load(
        resources.files("tuneforge.evaluation.probes").joinpath("identity.yaml").read_text()
    )
    probe = ProbeSet(
        {k: list(v) for k, v in shipped["categories"].items()}, list(shipped["templates"])
    )
    if extra is not None:
        _extend(probe, extra)
    return probe


def _extend(probe: ProbeSet, path: Path) -> None:
    if not path.is_file():
        raise TuneforgeError(f"--bias-terms: file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise TuneforgeError(f"--bias-terms: {path}: invalid YAML: {e}") from None
    if not isinstance(data, dict) or set(data) - {"categories", "templates"}:
        raise TuneforgeError(f"--bias-terms: {path}: expected keys `categories` and/or `templates`")
    for name, terms in (data.get("categories") or {}).items():
        if (
            not isinstance(terms, list)
            or len(terms) < 2
            or not all(isinstance(t, str) for t in terms)
        ):
            raise TuneforgeError(
                f"--bias-terms: {path}: categories.{name} must be a list of two or more terms"
            )
        merged = probe.categories.setdefault(str(name), [])
        merged.extend(t for t in terms if t not in merged)
    for template in data.get("templates") or []:
        if not isinstance(template, str) or "{term}" not in template:
            raise TuneforgeError(
                f"--bias-terms: {path}: every template needs a {{term}} placeholder: {template!r}"
            )
        probe.templates.append(template)


def _fill(template: str, term: str) -> str:
    text = template.replace("{term}", term)
    return text[0].upper() + text[1:] if text else text


def run_probe(
    classify: Classifier, labels: Sequence[str], probe: ProbeSet, worst: int = 5
) -> dict[str, Any]:
    """Flip rate per category, mean probability shift per term, and the worst templates."""
    texts: list[str] = []
    index: list[tuple[str, int, str]] = []  # (category, template number, term)
    for category, terms in probe.categories.items():
        for t, template in enumerate(probe.templates):
            for term in terms:
                texts.append(_fill(template, term))
                index.append((category, t, term))
    probs = np.asarray(classify(texts), dtype=float)
    by_key: dict[tuple[str, int], list[int]] = {}
    for i, (category, t, _) in enumerate(index):
        by_key.setdefault((category, t), []).append(i)

    result: dict[str, Any] = {
        "labels": list(labels),
        "templates": len(probe.templates),
        "categories": {},
    }
    for category, terms in probe.categories.items():
        flips = 0
        shifts: dict[str, list[float]] = {term: [] for term in terms}
        spreads = []
        for t, template in enumerate(probe.templates):
            rows = by_key[(category, t)]
            p = probs[rows]
            predicted = p.argmax(1)
            flips += int(len(set(predicted.tolist())) > 1)
            ref = int(p.mean(0).argmax())  # the template's reference label
            centred = p[:, ref] - p[:, ref].mean()
            for term, shift in zip(terms, centred, strict=True):
                shifts[term].append(float(shift))
            spreads.append(
                {
                    "template": template,
                    "label": labels[ref],
                    "spread": float(p[:, ref].max() - p[:, ref].min()),
                    "lowest": terms[int(p[:, ref].argmin())],
                    "highest": terms[int(p[:, ref].argmax())],
                    "predictions": {
                        term: labels[int(k)] for term, k in zip(terms, predicted, strict=True)
                    },
                }
            )
        spreads.sort(key=lambda s: -s["spread"])
        result["categories"][category] = {
            "flip_rate": flips / len(probe.templates),
            "mean_shift": {term: float(np.mean(v)) for term, v in shifts.items()},
            "max_abs_shift": float(max(abs(float(np.mean(v))) for v in shifts.values())),
            "worst": spreads[:worst],
        }
    return result
