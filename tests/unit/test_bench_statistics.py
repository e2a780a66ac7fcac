"""The benchmarks' quality statistics over seeds (bench/_measure.py): each arm's interval of the
mean and its difference from the baseline with Welch's interval."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import _measure  # noqa: E402


def _arm(values: list[float]) -> dict:
    return _measure.mean_over_seeds([{"wall_s": 1.0, "quality": {"accuracy": v}} for v in values])


def test_difference_from_the_baseline_with_welch_interval():
    results = {
        "tuneforge": _arm([0.92, 0.93, 0.91, 0.92]),
        "baseline": _arm([0.88, 0.90, 0.89, 0.87]),
    }
    diffs = _measure.differences(results, ["accuracy"])
    d = diffs["tuneforge"]["accuracy"]
    assert d["difference"] == pytest.approx(0.92 - 0.885)
    low, high = d["interval"]
    assert 0 < low < d["difference"] < high  # clearly better: the interval excludes zero
    assert d["p_value"] < 0.05
    assert "baseline" not in diffs
    interval = results["tuneforge"]["quality_interval"]["accuracy"]
    assert interval[0] < 0.92 < interval[1]


def test_equal_arms_differ_by_nothing_and_one_seed_gives_no_interval():
    same = {"tuneforge": _arm([0.9, 0.91, 0.92]), "baseline": _arm([0.9, 0.91, 0.92])}
    d = _measure.differences(same, ["accuracy"])["tuneforge"]["accuracy"]
    assert d["difference"] == pytest.approx(0) and d["interval"][0] < 0 < d["interval"][1]
    one = {"tuneforge": _arm([0.9]), "baseline": _arm([0.88])}
    assert _measure.differences(one, ["accuracy"]) == {}
