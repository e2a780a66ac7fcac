"""Each data check triggered on hand-made examples, and not triggered on clean ones."""

from tuneforge.data.check import Example, normalise, run_checks


def ex(texts, labels=None, tokens=None):
    labels = labels or [None] * len(texts)
    tokens = tokens or [len(t.split()) for t in texts]
    return [
        Example(t, i + 2, lab, n)
        for i, (t, lab, n) in enumerate(zip(texts, labels, tokens, strict=True))
    ]


CLEAN_TRAIN = ex(
    ["a good film", "a bad film", "loved the score", "hated the plot"], ["pos", "neg", "pos", "neg"]
)
CLEAN_VAL = ex(["fine acting", "dull ending"], ["pos", "neg"])


def checks(report):
    return sorted({f.check for f in report.findings})


def test_clean_data_has_no_findings_and_a_summary():
    report = run_checks({"train": CLEAN_TRAIN, "validation": CLEAN_VAL}, max_length=16)
    assert report.findings == []
    s = report.summary["splits"]["train"]
    assert s["examples"] == 4 and s["labels"] == {"neg": 2, "pos": 2}
    assert s["tokens"]["max"] == 3 and s["tokens"]["over_max_length"] == 0


def test_leakage_is_an_error_with_line_numbers():
    val = ex(["A GOOD film!", "new text"], ["pos", "neg"])
    report = run_checks({"train": CLEAN_TRAIN, "validation": val}, max_length=16)
    [f] = report.findings
    assert (f.check, f.severity, f.split, f.count, f.lines) == (
        "leakage",
        "error",
        "validation",
        1,
        [2],
    )
    assert report.errors == [f]


def test_duplicates_exact_and_normalised_are_warnings():
    train = ex(["a good film", "a good film", "A good film.", "other"], ["p", "p", "p", "n"])
    report = run_checks({"train": train}, max_length=16, imbalance_ratio=10)
    dups = [f for f in report.findings if f.check == "duplicates"]
    assert [(f.count, f.lines) for f in dups] == [(1, [3]), (1, [4])]
    assert all(f.severity == "warning" for f in dups)


def test_imbalance_triggers_above_ratio_only():
    train = ex([f"t{i}" for i in range(8)], ["a"] * 7 + ["b"], tokens=[5] * 8)
    assert "imbalance" in checks(run_checks({"train": train}, max_length=16))
    train = ex([f"t{i}" for i in range(6)], ["a"] * 4 + ["b"] * 2, tokens=[5] * 6)
    assert "imbalance" not in checks(run_checks({"train": train}, max_length=16))


def test_empty_short_long_and_truncation():
    train = ex(
        ["", "ok", "normal text here", "normal text too", "x " * 40], tokens=[0, 1, 3, 3, 40]
    )
    report = run_checks({"train": train}, max_length=10)
    by = {f.check: f for f in report.findings}
    assert by["empty_text"].lines == [2] and by["empty_text"].severity == "error"
    assert by["short_text"].lines == [3]
    assert by["long_text"].lines == [6]
    assert by["truncation"].lines == [6] and by["truncation"].count == 1


def test_severity_overrides_and_off():
    val = ex(["a good film"], ["pos"])
    report = run_checks(
        {"train": CLEAN_TRAIN, "validation": val}, max_length=16, severity={"leakage": "warning"}
    )
    assert report.findings[0].severity == "warning" and report.errors == []
    report = run_checks(
        {"train": CLEAN_TRAIN, "validation": val}, max_length=16, severity={"leakage": "off"}
    )
    assert report.findings == []


def test_parse_errors_are_reported_with_lines():
    report = run_checks(
        {"train": CLEAN_TRAIN},
        max_length=16,
        parse_errors={"train": [(7, "invalid JSON"), (9, "not an object")]},
    )
    [f] = report.findings
    assert (f.check, f.severity, f.lines) == ("parse_errors", "error", [7, 9])


def test_normalise():
    assert normalise("Café  CRÈME!") == "cafe creme"
