"""Issue 7 (continued updates): continue an earlier version on new data, replay, forgetting check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import assert_user_error, run_cli, sentiment_rows, write_csv

RECIPE = """name: {name}
base_model: {base}
task: classification
data: {{train: {train}, validation: {validation}}}
method: {method}
lora: {{r: 4, alpha: 8, dropout: 0.0}}
training: {{epochs: 2, batch_size: 8, learning_rate: 1.0e-2, logging_steps: 1, seed: 0}}
baseline: {{enabled: false}}
output_dir: {out}
"""


def _recipe(
    folder: Path, name: str, base, train: Path, validation: Path, *, method="lora", extra=""
):
    path = folder / f"{name}.yaml"
    path.write_text(
        RECIPE.format(
            name=name,
            base=base,
            train=train,
            validation=validation,
            method=method,
            out=folder / "runs",
        )
        + extra
    )
    return path


def _train(recipe: Path, *sets: str):
    proc = run_cli("train", recipe, *[a for s in sets for a in ("--set", s)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _run_dir(folder: Path, name: str) -> Path:
    [run] = [p for p in (folder / "runs").iterdir() if p.name.startswith(f"{name}-")]
    return run


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model):
    """Run A trained on old data, registered as sentiment@1 and promoted to production."""
    folder = tmp_path_factory.mktemp("continue")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNEFORGE_REGISTRY", str(folder / "registry.sqlite"))
        files = {
            "a_train": write_csv(folder / "a_train.csv", sentiment_rows(24)),
            "a_val": write_csv(folder / "a_val.csv", sentiment_rows(8, offset=100)),
            "b_train": write_csv(folder / "b_train.csv", sentiment_rows(20, offset=300)),
            "b_val": write_csv(folder / "b_val.csv", sentiment_rows(8, offset=400)),
        }
        _train(_recipe(folder, "a", tiny_model, files["a_train"], files["a_val"]))
        a = _run_dir(folder, "a")
        assert run_cli("models", "register", "sentiment", a.name).returncode == 0
        assert run_cli("models", "promote", "sentiment", "1").returncode == 0
        yield {"folder": folder, "a": a, "tiny": tiny_model, **files}


def test_continue_production_version_with_replay(world):
    folder, a = world["folder"], world["a"]
    recipe = _recipe(
        folder,
        "b",
        "model:sentiment@production",
        world["b_train"],
        world["b_val"],
        extra="replay: 0.5\n",
    )
    proc = _train(recipe)
    b = _run_dir(folder, "b")

    # B started from A's weights: its pre-training score on A's validation set is A's final one
    a_final = _json(a / "metrics.json")["tuned"]["validation"]
    forgetting = _json(b / "metrics.json")["forgetting"]
    assert forgetting["parent_run"] == a.name and forgetting["parent_model"] == "sentiment@1"
    assert forgetting["metric"] == "macro_f1" and forgetting["n"] == 8
    assert forgetting["before"] == pytest.approx(a_final["macro_f1"], abs=1e-9)
    assert forgetting["before_metrics"]["loss"] == pytest.approx(a_final["loss"], rel=1e-5)
    assert forgetting["before_metrics"]["accuracy"] == a_final["accuracy"]
    assert forgetting["change"] == pytest.approx(forgetting["after"] - forgetting["before"])
    # ... and training on B's data moved it (the parent's validation loss is not the same after)
    assert forgetting["after_metrics"]["loss"] != pytest.approx(a_final["loss"], rel=1e-3)

    # the training set is B's 20 rows plus 0.5 x 20 = 10 replayed rows of A's training data
    meta = _json(b / "run.json")
    assert sum(meta["info"]["counts"]["train"].values()) == 30
    replay = meta["parent"]["replay"]
    assert (replay["rows"], replay["new_train_rows"], replay["parent_train_rows"]) == (10, 20, 24)
    assert meta["parent"]["run_id"] == a.name and meta["base_model"] == "model:sentiment@production"
    assert meta["data_sources"]["train"] == str(world["b_train"])
    # the recorded recipe pins the version actually continued (production may move on)
    assert f"base_model: run:{a}" in (b / "recipe.yaml").read_text()

    flat = " ".join(proc.stdout.split())
    assert "Forgetting check on the parent's validation set (sentiment@1, n=8)" in flat
    report = (b / "report.md").read_text()
    assert "## Continued training and forgetting check" in report
    assert "Replay 0.5: 10 of the parent's 24 training examples" in report
    assert f"| loss | {a_final['loss']:.4f} |" in report

    shown = run_cli("runs", "show", b.name)
    assert shown.returncode == 0, shown.stderr
    info = json.loads(shown.stdout)
    assert info["lineage"] == [b.name, a.name] and info["parent"] == a.name
    assert info["chain"] == (
        f"{b.name} [model:sentiment@production] -> {a.name} -> base model {world['tiny']}"
    )

    # the continued run loads back and predicts with its own (continued) adapter
    from tuneforge.runs.run import Run

    loaded = Run.load(b)
    assert loaded.source.path == Path(world["tiny"]).resolve()
    assert loaded.predict(["great film, loved it #1"])[0]["label"] in {"negative", "positive"}


def test_unknown_references_are_user_errors(world):
    folder, a = world["folder"], world["a"]

    def attempt(base, train=world["b_train"], extra=""):
        recipe = _recipe(folder, "bad", base, train, world["b_val"], extra=extra)
        return run_cli("train", recipe)

    assert_user_error(
        attempt("run:nope-123"),
        "run 'nope-123' is not in the registry",
        "finished runs there:",
        a.name,
    )
    assert_user_error(
        attempt("model:nosuch@production"),
        "no model named 'nosuch'",
        "registered models: sentiment",
    )
    assert_user_error(
        attempt("model:sentiment@staging"),
        "model 'sentiment' has no version in stage 'staging'",
        "1 (production)",
    )
    assert_user_error(
        attempt("model:sentiment@7"), "model 'sentiment' has version 7", "1 (production)"
    )

    three = write_csv(
        folder / "three.csv",
        sentiment_rows(20, offset=500)
        + [{"text": f"it was fine #{i}", "label": "neutral"} for i in range(4)],
    )
    assert_user_error(
        attempt(f"run:{a.name}", train=three),
        "was trained on labels ['negative', 'positive']",
        "has labels ['negative', 'neutral', 'positive']",
        "new ['neutral']",
    )
    other_task = _recipe(folder, "bad", f"run:{a}", world["b_train"], world["b_val"])
    other_task.write_text(other_task.read_text().replace("task: classification", "task: pretrain"))
    assert_user_error(run_cli("train", other_task), "is a classification run", "task is pretrain")

    no_parent = attempt(str(world["tiny"]), extra="replay: 0.2\n")
    assert_user_error(no_parent, "bad.yaml line", "replay", "is not an earlier run")
    assert not any(p.name.startswith(("bad-", ".bad-")) for p in (folder / "runs").iterdir())


def test_changed_parent_data(world):
    """Replay refuses a parent file whose content changed; the forgetting check warns and skips."""
    folder, a = world["folder"], world["a"]
    copy = folder / "elsewhere" / a.name  # a copy of A resolved from its folder (no registry)
    shutil.copytree(a, copy)
    meta = _json(copy / "run.json")
    meta["data"]["train"]["sha256"] = "0" * 64
    meta["data"]["validation"]["sha256"] = "0" * 64
    (copy / "run.json").write_text(json.dumps(meta))

    replayed = _recipe(
        folder, "c", f"run:{copy}", world["b_train"], world["b_val"], extra="replay: 0.2\n"
    )
    assert_user_error(
        run_cli("train", replayed),
        f"training data of the parent run {a.name} cannot be replayed",
        f"its train file {world['a_train']} changed since that run",
        "set replay: 0",
    )

    proc = _train(_recipe(folder, "d", f"run:{copy}", world["b_train"], world["b_val"]))
    assert "forgetting check skipped" in " ".join(proc.stderr.split()) + " ".join(
        proc.stdout.split()
    )
    d = _run_dir(folder, "d")
    forgetting = _json(d / "metrics.json")["forgetting"]
    assert forgetting["parent_run"] == a.name
    assert f"its validation file {world['a_val']} changed" in forgetting["skipped"]
    assert "Forgetting check skipped" in (d / "report.md").read_text()


def test_continue_a_full_fine_tune(world, tmp_path):
    """A full-method parent: its saved model (with its classification head) is the new start."""
    folder = tmp_path
    _train(
        _recipe(folder, "f", world["tiny"], world["a_train"], world["a_val"], method="full"),
        "training.epochs=1",
        "training.learning_rate=1.0e-3",
    )
    f = _run_dir(folder, "f")
    _train(
        _recipe(folder, "g", f"run:{f}", world["b_train"], world["b_val"], method="lora"),
        "training.epochs=1",
    )
    g = _run_dir(folder, "g")
    before = _json(g / "metrics.json")["forgetting"]["before_metrics"]
    parent_final = _json(f / "metrics.json")["tuned"]["validation"]
    assert before["loss"] == pytest.approx(parent_final["loss"], rel=1e-5)
    assert _json(g / "run.json")["parent"]["method"] == "full"

    from tuneforge.runs.run import Run

    assert Run.load(g).predict(["a waste of two hours #3"])[0]["label"] in {"negative", "positive"}

    # the child loads the parent's weights from its folder: deleting the parent is refused
    assert_user_error(run_cli("runs", "rm", f.name), f"is the parent of {g.name}", "--keep-files")
    assert f.is_dir() and Run.load(g).labels == Run.load(f).labels
