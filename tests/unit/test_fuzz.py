"""Property-based fuzzing: malformed recipes and data files end in one clean user error, or work.

"Clean" means what `tuneforge` does for a TuneforgeError: exit code 2, a non-empty message, no
traceback. Anything else (a KeyError, a rich MarkupError, a pyarrow error, ...) is a bug. The
recipe fuzzers go through the real CLI in-process (Typer's CliRunner); the data fuzzers call what
`train` and `data check` run before any model is loaded (the task's strict reading and the data
check), with the tiny tokenizer, to stay fast.
"""

from __future__ import annotations

import json
import os
import string
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.config import Recipe, load_recipe
from tuneforge.errors import TuneforgeError

# TUNEFORGE_FUZZ_EXAMPLES=500 for a longer hunt; the default keeps the file well under a minute.
EXAMPLES = int(os.environ.get("TUNEFORGE_FUZZ_EXAMPLES", "30"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# --------------------------------------------------------------------------------------------------
# Helpers


def invoke(*args: str):
    """Run the CLI in-process the way `tuneforge.cli.main` does: (exit code, message)."""
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=True)
    error = result.exception
    if isinstance(error, TuneforgeError):
        return 2, error.message
    if error is not None and not isinstance(error, SystemExit):
        raise error  # a crash: the fuzzer found a bug
    return result.exit_code, result.output


def assert_clean(code: int, message: str) -> None:
    assert code in (0, 2), (code, message)
    if code == 2:
        assert message.strip(), "a user error needs a message"
        assert "Traceback" not in message


def user_error_or_ok(fn, *args):
    """Call `fn`; only a TuneforgeError (with a message) may come out."""
    try:
        return fn(*args)
    except TuneforgeError as e:
        assert e.message.strip()
        return None


# Any YAML-representable value, nested a little.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=10,
)
KEYS = [
    "name",
    "base_model",
    "task",
    "data",
    "method",
    "lora",
    "freeze",
    "training",
    "early_stopping",
    "baseline",
    "data_checks",
    "sft",
    "output_dir",
    "registry",
    "trust_remote_code",
    "allow_pickle",
]
SECTION_KEYS = {
    section: list(getattr(Recipe.model_fields[section].annotation, "model_fields", {}))
    for section in ("data", "lora", "freeze", "training", "early_stopping", "baseline", "sft")
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_model) -> Path:
    """A valid classification recipe (and its data) that the fuzzers then break."""
    from conftest import sentiment_rows, write_csv

    tmp = tmp_path_factory.mktemp("fuzz")
    write_csv(tmp / "train.csv", sentiment_rows(12))
    write_csv(tmp / "validation.csv", sentiment_rows(6, offset=100))
    (tmp / "base.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "fuzz",
                "base_model": str(tiny_model),
                "task": "classification",
                "data": {"train": "train.csv", "validation": "validation.csv"},
                "output_dir": str(tmp / "runs"),
            }
        )
    )
    return tmp


def base_recipe(workdir: Path) -> dict:
    return yaml.safe_load((workdir / "base.yaml").read_text())


# --------------------------------------------------------------------------------------------------
# Malformed recipes


@FUZZ
@given(text=st.text(max_size=200))
def test_any_text_as_a_recipe(workdir, text):
    path = workdir / "fuzz-text.yaml"
    path.write_text(text, encoding="utf-8")
    code, message = invoke("data", "check", path)
    assert_clean(code, message)


@FUZZ
@given(raw=st.binary(max_size=200))
def test_any_bytes_as_a_recipe(workdir, raw):
    path = workdir / "fuzz-bytes.yaml"
    path.write_bytes(raw)
    assert_clean(*invoke("data", "check", path))


@FUZZ
@given(doc=values)
def test_any_yaml_structure_as_a_recipe(workdir, doc):
    path = workdir / "fuzz-doc.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    code, message = invoke("data", "check", path)
    assert_clean(code, message)
    assert code == 2  # no random document is a valid recipe (name, task and data are required)


mutation = st.one_of(
    st.tuples(st.sampled_from(KEYS), values),  # a top-level field gets any value
    st.tuples(st.text(min_size=1, max_size=12), values),  # an unknown top-level key
    st.sampled_from(sorted(SECTION_KEYS)).flatmap(  # a field inside a section gets any value
        lambda s: st.tuples(st.just(s), st.sampled_from([*SECTION_KEYS[s], "typo_key"]), values)
    ),
)


@FUZZ
@given(mutations=st.lists(mutation, min_size=1, max_size=3))
def test_broken_fields_in_a_valid_recipe(workdir, mutations):
    """Wrong types, unknown keys and bad values in an otherwise valid recipe: load_recipe."""
    raw = base_recipe(workdir)
    for m in mutations:
        if len(m) == 2:
            raw[m[0]] = m[1]
        else:
            section = raw.get(m[0])
            if not isinstance(section, dict):
                section = raw[m[0]] = {}
            section[m[1]] = m[2]
    path = workdir / "fuzz-fields.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    user_error_or_ok(load_recipe, path)


@FUZZ
@given(
    key=st.text(alphabet=string.ascii_letters + "._-[]=", max_size=30),
    value=st.text(max_size=30),
)
def test_any_set_override(workdir, key, value):
    user_error_or_ok(load_recipe, workdir / "base.yaml", [f"{key}={value}"])


@settings(max_examples=max(EXAMPLES // 2, 1), deadline=None)
@given(mutations=st.lists(mutation, min_size=1, max_size=2))
def test_broken_recipe_through_data_check(workdir, mutations):
    """The same mutations end to end through `tuneforge data check` (tokenizer, data, findings)."""
    raw = base_recipe(workdir)
    for m in mutations:
        if len(m) == 2:
            raw[m[0]] = m[1]
        elif isinstance(raw.get(m[0]), dict):
            raw[m[0]][m[1]] = m[2]
        else:
            raw[m[0]] = {m[1]: m[2]}
    raw["base_model"] = base_recipe(workdir)["base_model"]  # never look for a hub model
    path = workdir / "fuzz-e2e.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert_clean(*invoke("data", "check", path))


# --------------------------------------------------------------------------------------------------
# Malformed data files


def prepare_and_check(recipe_path: Path, tokenizer) -> None:
    """What `train` runs before the model loads: the task's strict reading, then the data check."""
    from tuneforge.data.recipe_check import check_data
    from tuneforge.tasks import get_task

    recipe = load_recipe(recipe_path)
    task = get_task(recipe.task)
    for step in (
        lambda: task.prepare(recipe, tokenizer, recipe_path.parent),
        lambda: check_data(recipe, tokenizer, task, recipe_path.parent),
    ):
        user_error_or_ok(step)


def data_recipe(folder: Path, task: str, train: str, validation: str | None) -> Path:
    data = {"train": train}
    if validation is None:
        data["validation_split"] = 0.3
    else:
        data["validation"] = validation
    path = folder / "recipe.yaml"
    path.write_text(
        yaml.safe_dump({"name": "f", "base_model": "unused", "task": task, "data": data}),
        encoding="utf-8",
    )
    return path


cell = st.one_of(
    st.text(max_size=15),
    st.sampled_from(["positive", "negative", "", " ", "NaN", "null", "0", "1", "1.5"]),
)
row = st.dictionaries(
    st.sampled_from(["text", "label", "Text", "other", ""]), cell, min_size=0, max_size=4
)


@FUZZ
@given(rows=st.lists(row, max_size=12), cut=st.integers(min_value=0, max_value=400))
def test_classification_csv_rows(tiny_tokenizer, rows, cut):
    """Missing columns, empty and odd values, renamed headers, a file cut anywhere."""
    import csv
    import io

    fields = sorted({k for r in rows for k in r}) or ["text"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    text = buffer.getvalue()
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        (folder / "train.csv").write_text(text[: cut or None], encoding="utf-8")
        (folder / "val.csv").write_text(text, encoding="utf-8")
        prepare_and_check(
            data_recipe(folder, "classification", "train.csv", "val.csv"), tiny_tokenizer
        )


@FUZZ
@given(raw=st.binary(max_size=300), suffix=st.sampled_from([".csv", ".jsonl", ".json", ".parquet"]))
def test_random_bytes_as_a_data_file(tiny_tokenizer, raw, suffix):
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        (folder / f"train{suffix}").write_bytes(raw)
        prepare_and_check(
            data_recipe(folder, "classification", f"train{suffix}", None), tiny_tokenizer
        )


json_line = st.one_of(
    values.map(lambda v: json.dumps(v)),
    st.fixed_dictionaries(
        {},
        optional={
            "text": values,
            "label": values,
            "messages": st.one_of(
                values,
                st.lists(
                    st.fixed_dictionaries({}, optional={"role": values, "content": values}),
                    max_size=3,
                ),
            ),
            "prompt": values,
            "completion": values,
        },
    ).map(json.dumps),
    st.text(max_size=30),  # not JSON at all
)


@FUZZ
@given(
    lines=st.lists(json_line, max_size=10),
    task=st.sampled_from(["classification", "sft", "pretrain"]),
    cut=st.integers(min_value=0, max_value=300),
)
def test_jsonl_lines_for_every_task(tiny_tokenizer, lines, task, cut):
    """Wrong types (labels as lists, messages as numbers), truncated and non-JSON lines."""
    text = "\n".join(lines)
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        (folder / "train.jsonl").write_text(text[: cut or None], encoding="utf-8")
        (folder / "val.jsonl").write_text(text, encoding="utf-8")
        prepare_and_check(data_recipe(folder, task, "train.jsonl", "val.jsonl"), tiny_tokenizer)


# --------------------------------------------------------------------------------------------------
# Crashes the fuzzing found (kept as fixed examples)


def test_recipe_with_an_alias_cycle(workdir):
    """`&a [*a]` is a list that contains itself: the line index recursed until RecursionError."""
    path = workdir / "cycle.yaml"
    path.write_text("name: &a [*a]\ntask: sft\n")
    code, message = invoke("data", "check", path)
    assert code == 2
    assert "cycle.yaml line 1: name: Input should be a valid string (got [[[[" in message


def test_recipe_with_nested_aliases(workdir):
    """A "billion laughs" recipe (9**9 leaves through aliases) is read in linear time."""
    lines = ['l0: &l0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 10)]
    path = workdir / "laughs.yaml"
    path.write_text("\n".join([*lines, "name: laughs"]) + "\n")
    code, message = invoke("data", "check", path)
    assert code == 2
    assert "laughs.yaml line 10: unknown key 'l9'" in message


def test_markup_in_a_message_is_printed_as_is(workdir):
    """Rich markup in a message ('[wandb]', '[/x]') was eaten or crashed the error printer."""
    path = workdir / "markup.yaml"
    path.write_text("name: '[/x]'\ntask: [wandb]\n")
    proc = subprocess.run(
        [sys.executable, "-c", "from tuneforge.cli import main; main()", "data", "check", path],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "(got '[/x]')" in proc.stderr and "(got ['wandb'])" in proc.stderr
