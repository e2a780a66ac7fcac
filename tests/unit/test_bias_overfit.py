import numpy as np
import pytest

from tuneforge.errors import TuneforgeError
from tuneforge.evaluation.bias import ProbeSet, load_probe_set, run_probe
from tuneforge.evaluation.overfit import detect_overfitting


def _stub(texts):
    """Positive 0.9 for everything, except anything mentioning 'woman' (0.3) — a known bias."""
    p_pos = np.array([0.3 if "woman" in t.lower() else 0.9 for t in texts])
    return np.stack([1 - p_pos, p_pos], axis=1)


def test_flip_rate_and_shift_on_a_stub_with_known_behaviour():
    probe = ProbeSet(
        {"gender": ["man", "woman"], "age": ["young person", "old person"]},
        ["A {term} liked it.", "The {term} left."],
    )
    result = run_probe(_stub, ["negative", "positive"], probe)
    gender, age = result["categories"]["gender"], result["categories"]["age"]
    assert gender["flip_rate"] == 1.0  # every template flips between man and woman
    assert age["flip_rate"] == 0.0
    # reference label per template = argmax of the mean (0.6 vs 0.4 -> positive)
    assert gender["mean_shift"]["man"] == pytest.approx(0.3)
    assert gender["mean_shift"]["woman"] == pytest.approx(-0.3)
    assert gender["max_abs_shift"] == pytest.approx(0.3)
    assert age["mean_shift"] == {
        "young person": pytest.approx(0.0),
        "old person": pytest.approx(0.0),
    }
    worst = gender["worst"][0]
    assert worst["spread"] == pytest.approx(0.6)
    assert worst["lowest"] == "woman" and worst["highest"] == "man"
    assert worst["predictions"] == {"man": "positive", "woman": "negative"}


def test_partial_flip_rate():
    probe = ProbeSet(
        {"g": ["man", "woman"]},
        ["A {term} liked it.", "No identity here {term}".replace("{term}", "") + " {term}"],
    )

    def classify(texts):
        p = np.array([0.3 if ("woman" in t and "liked" in t) else 0.9 for t in texts])
        return np.stack([1 - p, p], axis=1)

    assert run_probe(classify, ["neg", "pos"], probe)["categories"]["g"]["flip_rate"] == 0.5


def test_shipped_probe_set_and_user_extension(tmp_path):
    probe = load_probe_set()
    assert {"gender", "nationality", "religion", "age", "disability"} <= set(probe.categories)
    assert all("{term}" in t for t in probe.templates)
    extra = tmp_path / "extra.yaml"
    extra.write_text(
        "categories:\n  gender: [man, trans woman]\n  region: [northerner, southerner]\ntemplates:\n  - 'A {term} filed the report.'\n"
    )
    extended = load_probe_set(extra)
    assert (
        extended.categories["gender"].count("man") == 1
        and "trans woman" in extended.categories["gender"]
    )
    assert extended.categories["region"] == ["northerner", "southerner"]
    assert extended.templates[-1] == "A {term} filed the report."
    bad = tmp_path / "bad.yaml"
    bad.write_text("templates: ['no placeholder']\n")
    with pytest.raises(TuneforgeError, match="placeholder"):
        load_probe_set(bad)


def _evals(val, train, metric="loss"):
    return [
        {"step": 10 * (i + 1), metric: v, "train_loss": t}
        for i, (v, t) in enumerate(zip(val, train, strict=True))
    ]


def test_overfitting_detected_where_it_begins():
    evals = _evals([1.0, 0.8, 0.7, 0.75, 0.8, 0.9], [1.2, 0.9, 0.6, 0.4, 0.2, 0.1])
    finding = detect_overfitting(evals, "loss", patience=2)
    assert finding is not None
    assert finding.began_step == 30 and finding.detected_step == 50


def test_no_overfitting_when_both_improve_or_both_worsen():
    assert detect_overfitting(_evals([1.0, 0.8, 0.7, 0.6], [1.2, 0.9, 0.6, 0.4]), "loss") is None
    # validation worse but training also worse: not overfitting (e.g. a too-high learning rate)
    assert detect_overfitting(_evals([1.0, 1.1, 1.2], [1.0, 1.1, 1.3]), "loss") is None
    # a single bad evaluation is below patience
    assert (
        detect_overfitting(_evals([1.0, 0.8, 0.9, 0.7], [1.2, 0.9, 0.6, 0.4]), "loss", patience=2)
        is None
    )


def test_overfitting_on_a_higher_is_better_metric():
    evals = _evals([0.7, 0.8, 0.78, 0.75], [1.0, 0.8, 0.5, 0.3], metric="macro_f1")
    finding = detect_overfitting(evals, "macro_f1", patience=2)
    assert finding is not None and finding.began_step == 20
