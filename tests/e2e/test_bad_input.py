"""Bad input through the CLI, as a user meets it.

Every mistake a user can make in a recipe, a `--set`, a base model name, a data file or a
`predict`/`eval` call must end with exit code 2, one message naming the file, line or field (and
how to fix it), no traceback, and no run directory that could pass for a finished run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import assert_user_error, run_cli, sentiment_rows, write_csv, write_recipe

# --------------------------------------------------------------------------------------------------
# Helpers


def check_error(proc, *fragments: str, output_dir: Path | None = None) -> None:
    """A user error (exit 2, message with `fragments`, no traceback) that left no run behind."""
    assert_user_error(proc, *fragments)
    assert "Traceback" not in proc.stdout, proc.stdout
    if output_dir is not None:
        assert_no_run_left(output_dir)


def assert_no_run_left(output_dir: Path) -> None:
    if not output_dir.exists():
        return
    entries = sorted(p.name for p in output_dir.iterdir())
    assert not [n for n in entries if not n.startswith(".")], (
        f"finished-looking run left: {entries}"
    )
    assert entries == [], f"a failed run should leave nothing behind: {entries}"


def line_of(text: str, fragment: str) -> int:
    """1-based line of the first line containing `fragment`."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if fragment in line)


def data_recipe(
    tmp_path: Path,
    tiny_model: Path,
    train: Path,
    *,
    validation: Path | None = None,
    data_extra: str = "",
) -> Path:
    """A classification recipe on the tiny model and these files (no validation file: a split)."""
    split = f"validation: {validation}" if validation is not None else "validation_split: 0.25"
    return write_recipe(
        tmp_path / "bad-data.yaml",
        f"""
name: bad-data
base_model: {tiny_model}
task: classification
data:
  train: {train}
  {split}
{data_extra}
lora: {{r: 4, alpha: 8, dropout: 0.0}}
training: {{epochs: 1, batch_size: 8, max_steps: 2}}
baseline: {{enabled: false}}
output_dir: {tmp_path / "runs"}
""",
    )


def output_dir_of(recipe: Path) -> Path:
    return Path(yaml.safe_load(recipe.read_text())["output_dir"])


# --------------------------------------------------------------------------------------------------
# One real (tiny) run shared by the positive `--set` check and the predict / eval tests


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model) -> dict:
    tmp = tmp_path_factory.mktemp("bad-input-run")
    train = write_csv(tmp / "train.csv", sentiment_rows(24))
    validation = write_csv(tmp / "validation.csv", sentiment_rows(8, offset=100))
    recipe = write_recipe(
        tmp / "recipe.yaml",
        f"""
name: tiny-run
base_model: {tiny_model}
task: classification
data: {{train: {train}, validation: {validation}}}
lora: {{r: 4, alpha: 8, dropout: 0.0}}
training: {{epochs: 3, batch_size: 8, learning_rate: 1.0e-2, logging_steps: 1}}
baseline: {{enabled: false}}
output_dir: {tmp / "runs"}
""",
    )
    proc = run_cli("train", recipe, "--set", "training.epochs=1", "--set", "training.max_steps=2")
    runs = sorted((tmp / "runs").iterdir()) if (tmp / "runs").exists() else []
    return {"proc": proc, "runs": runs, "tmp": tmp}


def test_set_overrides_a_field_and_a_quick_run_finishes(trained):
    proc = trained["proc"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    runs = trained["runs"]
    assert len(runs) == 1 and not runs[0].name.startswith("."), runs
    run = runs[0]
    saved = yaml.safe_load((run / "recipe.yaml").read_text())
    assert saved["training"]["epochs"] == 1  # the file says 3: --set won
    assert saved["training"]["max_steps"] == 2
    assert json.loads((run / "status.json").read_text())["status"] == "finished"
    assert json.loads((run / "metrics.json").read_text())["best"]["global_steps"] == 2


@pytest.fixture
def run_dir(trained) -> Path:
    if trained["proc"].returncode != 0 or len(trained["runs"]) != 1:
        pytest.fail(f"the shared tiny run failed:\n{trained['proc'].stderr[-3000:]}")
    return trained["runs"][0]


# --------------------------------------------------------------------------------------------------
# The recipe file


def test_missing_recipe_file(tmp_path):
    proc = run_cli("train", tmp_path / "nope.yaml")
    check_error(proc, "recipe file not found", str(tmp_path / "nope.yaml"))


def test_recipe_path_is_a_folder(tmp_path):
    check_error(run_cli("train", tmp_path), str(tmp_path), "is a folder, not a recipe file")


def test_invalid_yaml_names_the_line(tmp_path, tiny_model):
    recipe = write_recipe(
        tmp_path / "broken.yaml",
        f"name: broken\nbase_model: {tiny_model}\ntask: classification\ndata: {{train: [a.csv}}\n",
    )
    check_error(
        run_cli("train", recipe),
        str(recipe),
        "line 4",
        "invalid YAML",
        output_dir=tmp_path / "runs",
    )


@pytest.mark.parametrize(
    ("old", "new", "fragments"),
    [
        ("training:", "trainig:", ["unknown key 'trainig'", "did you mean 'training'"]),
        (
            "training: {epochs:",
            "training: {epoch:",
            ["unknown key 'training.epoch'", "did you mean 'epochs'"],
        ),
    ],
    ids=["top-level", "nested"],
)
def test_unknown_key_suggests_the_right_one(tmp_path, sentiment_recipe, old, new, fragments):
    text = sentiment_recipe.read_text()
    assert old in text
    bad = write_recipe(tmp_path / "typo.yaml", text.replace(old, new))
    where = f"{bad} line {line_of(text, old)}"
    check_error(run_cli("train", bad), where, *fragments, output_dir=tmp_path / "runs")


@pytest.mark.parametrize(
    ("old", "new", "fragments"),
    [
        (
            "learning_rate: 1.0e-2",
            "learning_rate: -1",
            ["training.learning_rate", "greater than 0", "got -1"],
        ),
        (
            "batch_size: 8",
            "batch_size: eight",
            ["training.batch_size", "valid integer", "got 'eight'"],
        ),
    ],
    ids=["out-of-range", "wrong-type"],
)
def test_bad_value_names_the_field(tmp_path, sentiment_recipe, old, new, fragments):
    text = sentiment_recipe.read_text()
    assert old in text
    bad = write_recipe(tmp_path / "bad-value.yaml", text.replace(old, new))
    where = f"{bad} line {line_of(text, old)}"
    check_error(run_cli("train", bad), where, *fragments, output_dir=tmp_path / "runs")


@pytest.mark.parametrize(
    ("option", "fragments"),
    [
        ("training.epochs", ["--set 'training.epochs'", "expected KEY=VALUE"]),
        # a bad value from --set is blamed on the option, not on the recipe line it replaced
        ("training.epochs=many", ["--set training.epochs=many", "training.epochs", "valid number"]),
        (
            "trainig.epochs=1",
            ["--set trainig.epochs=1", "unknown key 'trainig'", "did you mean 'training'"],
        ),
    ],
    ids=["no-equals", "bad-value", "unknown-key"],
)
def test_bad_set_option(tmp_path, sentiment_recipe, option, fragments):
    proc = run_cli("train", sentiment_recipe, "--set", option)
    check_error(proc, *fragments, output_dir=tmp_path / "runs")
    if option == "training.epochs=many":
        assert "line " not in " ".join(proc.stderr.split()), proc.stderr


# --------------------------------------------------------------------------------------------------
# The base model


def test_unknown_base_model_lists_the_embedded_ones(tmp_path, sentiment_recipe):
    proc = run_cli("train", sentiment_recipe, "--set", "base_model=gpt-17-turbo")
    check_error(
        proc,
        "base_model",
        "unknown model 'gpt-17-turbo'",
        "smollm2-135m",
        output_dir=tmp_path / "runs",
    )


def test_hub_id_offline_says_how_to_provide_it(tmp_path, sentiment_recipe, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    proc = run_cli("train", sentiment_recipe, "--set", "base_model=someorg/somemodel")
    check_error(
        proc,
        "'someorg/somemodel' is not available locally",
        "HF_HUB_OFFLINE=1",
        "hf download someorg/somemodel",
        "base_model: DIR",
        output_dir=tmp_path / "runs",
    )


# --------------------------------------------------------------------------------------------------
# Data files


def test_missing_data_file(tmp_path, sentiment_recipe):
    missing = tmp_path / "no-such-train.csv"
    proc = run_cli("train", sentiment_recipe, "--set", f"data.train={missing}")
    check_error(
        proc,
        f"data.train: file not found: {missing}",
        "check the path in the recipe",
        output_dir=tmp_path / "runs",
    )


def test_empty_data_file(tmp_path, tiny_model, sentiment_files):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    recipe = data_recipe(tmp_path, tiny_model, empty, validation=sentiment_files["validation"])
    check_error(
        run_cli("train", recipe), f"data.train: {empty} is empty", output_dir=tmp_path / "runs"
    )


def test_unknown_file_extension(tmp_path, tiny_model, sentiment_files):
    sheet = tmp_path / "train.xlsx"
    sheet.write_bytes(sentiment_files["train"].read_bytes())
    recipe = data_recipe(tmp_path, tiny_model, sheet, validation=sentiment_files["validation"])
    check_error(
        run_cli("train", recipe),
        str(sheet),
        "unknown format '.xlsx'",
        ".csv",
        output_dir=tmp_path / "runs",
    )


def test_missing_column_lists_the_columns(tmp_path, tiny_model, sentiment_files):
    recipe = data_recipe(
        tmp_path,
        tiny_model,
        sentiment_files["train"],
        validation=sentiment_files["validation"],
        data_extra="  text_field: review",
    )
    check_error(
        run_cli("train", recipe),
        f"data.train: {sentiment_files['train']} has no column 'review'",
        "columns: ['text', 'label']",
        output_dir=tmp_path / "runs",
    )


def test_empty_text_cell_names_the_line(tmp_path, tiny_model, sentiment_files):
    rows = sentiment_rows(24)
    rows[5]["text"] = ""  # header is line 1, so rows[5] is line 7
    train = write_csv(tmp_path / "holes.csv", rows)
    recipe = data_recipe(tmp_path, tiny_model, train, validation=sentiment_files["validation"])
    check_error(
        run_cli("train", recipe),
        f"{train} line 7",
        "empty text in column 'text'",
        output_dir=tmp_path / "runs",
    )


def test_validation_label_never_seen_in_training(tmp_path, tiny_model, sentiment_files):
    rows = sentiment_rows(8, offset=100)
    rows[3]["label"] = "neutral"  # line 5
    validation = write_csv(tmp_path / "validation-new-label.csv", rows)
    recipe = data_recipe(tmp_path, tiny_model, sentiment_files["train"], validation=validation)
    check_error(
        run_cli("train", recipe),
        f"data.validation: {validation} line 5",
        "'neutral' never appears in the training data ['negative', 'positive']",
        output_dir=tmp_path / "runs",
    )


def test_single_example_class_with_validation_split(tmp_path, tiny_model):
    rows = sentiment_rows(24)
    rows.insert(10, {"text": "it was a film", "label": "neutral"})  # line 12
    train = write_csv(tmp_path / "train-single.csv", rows)
    recipe = data_recipe(tmp_path, tiny_model, train)
    check_error(
        run_cli("train", recipe),
        "data.validation_split",
        "single example",
        f"'neutral' ({train} line 12)",
        output_dir=tmp_path / "runs",
    )


def test_non_utf8_csv_names_the_line(tmp_path, tiny_model, sentiment_files):
    lines = sentiment_files["train"].read_bytes().splitlines(keepends=True)
    lines[4] = "caf\u00e9 was lovely,positive\n".encode("latin-1")  # line 5
    train = tmp_path / "latin1.csv"
    train.write_bytes(b"".join(lines))
    recipe = data_recipe(tmp_path, tiny_model, train, validation=sentiment_files["validation"])
    check_error(
        run_cli("train", recipe),
        f"data.train: {train} line 5: not valid UTF-8",
        "byte 0xe9",
        "iconv",
        output_dir=tmp_path / "runs",
    )


def test_malformed_jsonl_line(tmp_path, tiny_model, sentiment_files):
    lines = [json.dumps(r, ensure_ascii=False) for r in sentiment_rows(24)]
    # A raw U+2028 inside a JSON string is valid JSON and must not shift the line count.
    lines[1] = json.dumps(
        {"text": "first part\u2028second part", "label": "positive"}, ensure_ascii=False
    )
    lines[4] = '{"text": "unterminated, "label": "positive"}'  # line 5
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(lines) + "\n", encoding="utf-8")
    recipe = data_recipe(tmp_path, tiny_model, train, validation=sentiment_files["validation"])
    check_error(
        run_cli("train", recipe),
        f"data.train: {train} line 5: invalid JSON",
        output_dir=tmp_path / "runs",
    )


@pytest.mark.parametrize(
    ("bad_line", "fragments"),
    [
        (
            "a great, great film,positive\n",
            ["line 5: 3 cells but the header has 2 columns", "quote cells"],
        ),
        ('"stray quote,positive\n', ["line 5: malformed CSV", "unmatched quote"]),
    ],
    ids=["too-many-cells", "stray-quote"],
)
def test_malformed_csv_row_names_the_line(
    tmp_path, tiny_model, sentiment_files, bad_line, fragments
):
    lines = sentiment_files["train"].read_text().splitlines(keepends=True)
    lines[4] = bad_line  # line 5
    train = tmp_path / "train-bad-row.csv"
    train.write_text("".join(lines))
    recipe = data_recipe(tmp_path, tiny_model, train, validation=sentiment_files["validation"])
    check_error(
        run_cli("train", recipe), f"data.train: {train}", *fragments, output_dir=tmp_path / "runs"
    )


def test_only_one_class_in_training(tmp_path, tiny_model, sentiment_files):
    train = write_csv(
        tmp_path / "one-class.csv", [r for r in sentiment_rows(24) if r["label"] == "positive"]
    )
    recipe = data_recipe(tmp_path, tiny_model, train, validation=sentiment_files["validation"])
    check_error(
        run_cli("train", recipe),
        f"data.train: {train}",
        "only one label ('positive')",
        "two or more",
        output_dir=tmp_path / "runs",
    )


# --------------------------------------------------------------------------------------------------
# predict / eval


@pytest.mark.parametrize(
    ("command", "kind"),
    [("predict", "plain-folder"), ("eval", "unfinished-run")],
)
def test_not_a_run_directory(tmp_path, sentiment_files, command, kind):
    if kind == "plain-folder":
        path, fragments = tmp_path, [f"{tmp_path} is not a finished run", "tuneforge train"]
    else:
        path = tmp_path / ".tiny-20260101-000000.incomplete"
        path.mkdir()
        (path / "status.json").write_text(json.dumps({"status": "failed"}))
        fragments = [f"{path} is not a finished run", "status: failed"]
    args = (
        [command, path, "a fine film"]
        if command == "predict"
        else [command, path, "--data", sentiment_files["test"]]
    )
    check_error(run_cli(*args), *fragments)


def test_eval_label_the_model_was_not_trained_on(tmp_path, run_dir):
    rows = sentiment_rows(6, offset=300)
    rows[2]["label"] = "neutral"  # line 4
    data = write_csv(tmp_path / "eval-new-label.csv", rows)
    check_error(
        run_cli("eval", run_dir, "--data", data),
        f"--data: {data} line 4",
        "'neutral' is not one the model was trained on ['negative', 'positive']",
    )


@pytest.mark.parametrize("both", [True, False], ids=["both", "neither"])
def test_predict_needs_texts_or_input_not_both(tmp_path, run_dir, sentiment_files, both):
    args = ["a fine film", "--input", sentiment_files["test"]] if both else []
    check_error(
        run_cli("predict", run_dir, *args), "give texts on the command line or --input FILE"
    )
    assert not sentiment_files["test"].with_suffix(".predictions.jsonl").exists()


def test_output_dir_that_is_a_file(sentiment_recipe, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    proc = run_cli("train", sentiment_recipe, "--set", f"output_dir={blocker}")
    assert_user_error(proc, "output_dir", "is a file, not a folder")


def test_non_string_text_is_named(tmp_path, tiny_model, sentiment_files):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine", "label": "positive"}\n{"text": 5, "label": "negative"}\n')
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"name: r\nbase_model: {tiny_model}\ntask: classification\n"
        f"data: {{train: {bad}, validation: {sentiment_files['validation']}}}\noutput_dir: {tmp_path / 'runs'}\n"
    )
    assert_user_error(run_cli("train", recipe), str(bad), "line 2", "holds a int, not text")
