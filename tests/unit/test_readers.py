import json

import pytest

from tuneforge.data.readers import read_records, require_column
from tuneforge.data.splits import stratified_split
from tuneforge.errors import TuneforgeError


def test_csv_rows_keep_their_line_numbers(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text('text,label\n"multi\nline",positive\nplain,negative\n', encoding="utf-8")
    rows = read_records(p)
    assert [r["text"] for r in rows] == ["multi\nline", "plain"]
    assert [r["_line"] for r in rows] == [3, 4]  # csv line_num counts physical lines read


def test_jsonl_json_parquet_and_saved_dataset_give_the_same_rows(tmp_path):
    import datasets

    data = [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in data) + "\n")
    (tmp_path / "d.json").write_text(json.dumps(data))
    ds = datasets.Dataset.from_list(data)
    ds.to_parquet(str(tmp_path / "d.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    for name in ("d.jsonl", "d.json", "d.parquet", "saved"):
        rows = read_records(tmp_path / name)
        assert [{k: v for k, v in r.items() if k != "_line"} for r in rows] == data, name


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.csv", b"", "is empty"),
        ("d.xlsx", b"xx", "unknown format '.xlsx'"),
        ("bad.jsonl", b'{"text": "a"}\n{"text": \n', "line 2: invalid JSON"),
        ("list.jsonl", b'{"text": "a"}\n[1, 2]\n', "line 2: expected a JSON object"),
        (
            "latin1.csv",
            "text,label\nok,a\ncaf\xe9,b\n".encode("latin-1"),
            "line 3: not valid UTF-8",
        ),
        ("wide.csv", b"text,label\na,b,c\n", "line 2: 3 cells but the header has 2 columns"),
        ("header.csv", b"text,label\n", "has no rows"),
    ],
)
def test_malformed_files_name_the_file_and_line(tmp_path, name, content, message):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(TuneforgeError) as e:
        read_records(p, what="data.train")
    assert message in str(e.value)
    assert str(p) in str(e.value)
    assert str(e.value).startswith("data.train")


def test_missing_file_and_non_dataset_folder(tmp_path):
    with pytest.raises(TuneforgeError, match="file not found"):
        read_records(tmp_path / "nope.csv")
    with pytest.raises(TuneforgeError, match="not one saved by datasets"):
        read_records(tmp_path)


def test_missing_column_lists_the_columns(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("review,label\nx,y\n")
    with pytest.raises(TuneforgeError) as e:
        require_column(read_records(p), "text", p, "data.train")
    assert "no column 'text'" in str(e.value)
    assert "['review', 'label']" in str(e.value)


def test_stratified_split_is_seeded_and_keeps_balance():
    rows = [{"i": i} for i in range(40)]
    labels = ["a"] * 30 + ["b"] * 10
    train1, val1 = stratified_split(rows, labels, 0.2, seed=3, what="x")
    train2, val2 = stratified_split(rows, labels, 0.2, seed=3, what="x")
    assert val1 == val2 and train1 == train2
    assert len(val1) == 8
    assert sum(labels[r["i"]] == "b" for r in val1) == 2  # 25% of the held-out rows, as in the data
    assert {r["i"] for r in train1}.isdisjoint(r["i"] for r in val1)
    _, val3 = stratified_split(rows, labels, 0.2, seed=4, what="x")
    assert val3 != val1


def test_stratified_split_refuses_single_example_classes():
    with pytest.raises(TuneforgeError, match=r"label\(s\) \['c'\] have a single example"):
        stratified_split(
            [{}] * 5, ["a", "a", "b", "b", "c"], 0.4, seed=0, what="data.validation_split"
        )
