import pytest

from tuneforge.evaluation.metrics import classification_metrics, error_reduction, relative_drop


def test_metrics_on_hand_made_predictions():
    # true:  a a a b b c ; pred: a a b b c c
    m = classification_metrics([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2], ["a", "b", "c"])
    assert m["n"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class"]["a"] == {
        "precision": 1.0,
        "recall": pytest.approx(2 / 3),
        "f1": pytest.approx(0.8),
        "support": 3,
    }
    assert m["per_class"]["b"]["precision"] == pytest.approx(0.5)
    assert m["per_class"]["b"]["recall"] == pytest.approx(0.5)
    assert m["per_class"]["c"]["precision"] == pytest.approx(0.5)
    assert m["per_class"]["c"]["recall"] == pytest.approx(1.0)
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_absent_class_counts_as_zero_not_an_error():
    m = classification_metrics([0, 0], [0, 0], ["a", "b"])
    assert m["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["confusion_matrix"] == [[2, 0], [0, 0]]


def test_error_reduction():
    assert error_reduction(0.6, 0.9) == pytest.approx(75.0)  # 40% errors -> 10% errors
    assert error_reduction(0.9, 0.8) == pytest.approx(-100.0)
    assert error_reduction(1.0, 1.0) is None


def test_relative_drop():
    assert relative_drop(20.0, 15.0) == pytest.approx(25.0)
    assert relative_drop(0.0, 1.0) is None
