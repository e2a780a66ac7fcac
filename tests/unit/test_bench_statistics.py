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


def test_merged_studies_pool_their_seeds(tmp_path, capsys):
    def study(first: int, tuned: list[float], base: list[float], extra_arm: bool) -> Path:
        per_seed = {
            "tuneforge": [{"wall_s": 1.0, "quality": {"accuracy": v}} for v in tuned],
            "baseline": [{"wall_s": 1.0, "quality": {"accuracy": v}} for v in base],
        }
        if extra_arm:  # ran in one study only: not in the merged one
            per_seed["tuneforge-fp32"] = per_seed["tuneforge"]
        path = tmp_path / f"study-{first}.json"
        path.write_text(
            _measure.json.dumps(
                {"benchmark": "classification", "seeds": len(tuned), "first_seed": first}
                | {"per_seed": per_seed, "cpu": "x"}
            )
        )
        return path

    files = [study(0, [0.90, 0.92], [0.88, 0.86], True), study(2, [0.91], [0.87], False)]
    out = tmp_path / "merged.json"
    args = _measure.parse_args("doc", out, ["--merge", *map(str, files), "--output", str(out)])
    _measure.merge(args, "classification", ["accuracy"])
    merged = _measure.json.loads(out.read_text())
    assert merged["seeds"] == [0, 1, 2]
    assert set(merged["per_seed"]) == {"tuneforge", "baseline"}
    assert merged["tuneforge"]["quality_seeds"]["accuracy"] == [0.90, 0.92, 0.91]
    d = merged["differences_from_baseline"]["tuneforge"]["accuracy"]
    assert d["difference"] == pytest.approx(0.91 - 0.87)
    assert "0.900 0.920 0.910" in capsys.readouterr().out
    capsys.readouterr()
    for wrong in (args, _measure.parse_args("doc", out, ["--merge", str(tmp_path / "none.json")])):
        with pytest.raises(SystemExit) as e:
            _measure.merge(wrong, "sft", ["accuracy"])
        assert e.value.code == 2 and "is not a sft benchmark result" in capsys.readouterr().err


def test_seed_study_reads_every_arm_over_ten_seeds_and_pairs_them_by_seed():
    """bench/seed_study.py: the committed result files give each arm seeds 0-9, and a paired
    difference is taken seed by seed (an arm against itself shifted by 0.01 on even seeds and
    0.03 on odd ones: mean 0.02, t-interval 0.02 ± 2.262 × 0.01054 / √10)."""
    import seed_study

    found = seed_study.arms()
    assert all(sorted(arm) == list(range(10)) for arm in found.values()), {
        name: sorted(arm) for name, arm in found.items()
    }
    default = found["factor up to 1.25 (default)"]
    assert default[0]["accuracy"] == 0.9 and default[0]["test_accuracy"] == 0.88  # seed 0's run
    shifted = {
        s: {k: v + 0.01 + 0.02 * (s % 2) for k, v in row.items()} for s, row in default.items()
    }
    assert seed_study.paired(shifted, default, "accuracy") == "+0.020 [+0.012, +0.028]"
