"""A sweep scores the base model once: the second run of the same data and base model, trained
differently, reads the first one's base figures (`baseline.reuse`), says so, and shows the same
comparison; `baseline.reuse: false` scores again."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from conftest import run_cli


def _train(recipe: Path, *overrides: str) -> tuple[Path, str]:
    output = recipe.parent / "runs"
    before = set(output.iterdir()) if output.is_dir() else set()
    args = [a for o in overrides for a in ("--set", o)]
    proc = run_cli("train", recipe, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = set(output.iterdir()) - before
    return run, " ".join(proc.stderr.split())


def _close(a, b, where="base") -> None:
    """Equal figures, floats to 1e-6."""
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert math.isclose(a, b, abs_tol=1e-6), (where, a, b)
    else:
        assert a == b, (where, a, b)


def _base(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())["base"]


def test_a_second_run_reuses_the_base_models_scores(sentiment_recipe):
    kept = Path(os.environ["TUNEFORGE_BASE_SCORES"])
    first, said = _train(sentiment_recipe, "training.epochs=1")
    assert "reused" not in said
    assert "base_scores_reused" not in json.loads((first / "run.json").read_text())
    assert len(list(kept.glob("*.json"))) == 1

    # another learning rate, seed and length: a sweep
    second, said = _train(
        sentiment_recipe, "training.epochs=1", "training.learning_rate=0.005", "training.seed=3"
    )
    assert f"Base model scores reused from run {first.name}" in said
    meta = json.loads((second / "run.json").read_text())
    assert meta["base_scores_reused"]["run"] == first.name
    assert meta["timings"]["base_eval"] < 5
    assert _base(second) == _base(first)
    comparison = json.loads((second / "metrics.json").read_text())["comparison"]
    assert set(comparison) == {"validation", "test"}  # tuned against the reused base, per split
    assert f"reused from run {first.name}" in (second / "report.md").read_text()

    # scored again: the same figures as the kept ones (the key's promise), to rounding
    third, said = _train(sentiment_recipe, "training.epochs=1", "baseline.reuse=false")
    assert "reused" not in said
    assert "base_scores_reused" not in json.loads((third / "run.json").read_text())
    _close(_base(third), _base(first))
    assert len(list(kept.glob("*.json"))) == 1  # the same key, scored again and kept again

    # another instruction: another scoring
    fourth, said = _train(sentiment_recipe, "training.epochs=1", "baseline.instruction=Label it.")
    assert "reused" not in said
    assert len(list(kept.glob("*.json"))) == 2


def _eval(run: Path, data: str, *flags: str) -> tuple[dict, str]:
    proc = run_cli("eval", run, "--data", data, "--base", "--json", *flags)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout), " ".join(proc.stderr.split())


def test_eval_of_a_sweeps_runs_on_one_file_scores_the_base_model_once(
    sentiment_recipe, sentiment_files
):
    kept = Path(os.environ["TUNEFORGE_BASE_SCORES"])
    first, _ = _train(sentiment_recipe, "training.epochs=1")
    second, _ = _train(sentiment_recipe, "training.epochs=1", "training.learning_rate=0.005")
    entries = set(kept.glob("*.json"))
    data = sentiment_files["test"]

    scored, said = _eval(first, data)
    assert "reused" not in said and "base_reused" not in scored
    assert len(set(kept.glob("*.json")) - entries) == 1  # the eval's scoring, a key of its own

    read, said = _eval(second, data)
    assert f"Base model scores reused from run {first.name} (tuneforge eval --base" in said
    assert read["base_reused"]["run"].startswith(first.name)
    assert read["base"] == scored["base"]
    assert read["accuracy"] != scored["accuracy"] or read["loss"] != scored["loss"]  # other run
    assert set(read["comparison"]) == set(scored["comparison"])

    again, said = _eval(second, data, "--rescore-base")
    assert "reused" not in said and "base_reused" not in again
    _close(again["base"], scored["base"])
    _close(again["comparison"], read["comparison"], "comparison")


def test_rescore_base_without_base_is_refused(tmp_path):
    proc = run_cli("eval", tmp_path, "--data", tmp_path / "x.csv", "--rescore-base")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--rescore-base goes with --data FILE --base" in " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr
