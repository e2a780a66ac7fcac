"""The base model's kept scores: the key changes with what the scoring reads, not with how the
run trains; the store is whole-or-absent and never fails a run."""

import json
import os
import shutil

import pytest

from tuneforge.config import Recipe
from tuneforge.runs import base_scores

SPLITS = {
    "validation": [{"text": "great film", "label": "positive"}],
    "test": [{"text": "dull", "label": "negative"}],
}
INFO = {"labels": ["negative", "positive"], "text_field": "text", "label_field": "label"}


@pytest.fixture
def model_dir(tiny_model, tmp_path):
    """A copy of the tiny model: its files can be edited."""
    return shutil.copytree(tiny_model, tmp_path / "model")


def _recipe(**sections) -> Recipe:
    raw = {
        "name": "k",
        "base_model": "smollm2-135m",
        "task": "classification",
        "data": {"train": "t.csv", "validation": "v.csv"},
        **sections,
    }
    return Recipe.model_validate(raw)


def _key(recipe=None, model_dir=None, splits=SPLITS, info=INFO, device="cpu", precision="fp32"):
    return base_scores.key(
        recipe or _recipe(), model_dir, splits, info, device=device, precision=precision
    )


def test_training_only_fields_keep_the_key(model_dir):
    first = _key(model_dir=model_dir)
    assert first == _key(model_dir=model_dir)  # stable
    sweeps = [
        _recipe(name="other"),
        _recipe(method="full"),
        _recipe(lora={"r": 4}),
        _recipe(training={"learning_rate": 1e-3, "seed": 7, "epochs": 1, "length_jitter": 1}),
        _recipe(evaluation={"resamples": 200}),
        _recipe(baseline={"reuse": False}),
    ]
    for recipe in sweeps:
        assert _key(recipe, model_dir) == first, recipe


def test_what_the_scoring_reads_changes_the_key(model_dir):
    first = _key(model_dir=model_dir)
    changed = {
        "instruction": _key(_recipe(baseline={"instruction": "Say yes."}), model_dir),
        "max_length": _key(_recipe(training={"max_length": 64}), model_dir),
        "batch size": _key(_recipe(training={"batch_size": 4}), model_dir),
        "a row": _key(
            model_dir=model_dir,
            splits={**SPLITS, "test": [{"text": "dull!", "label": "negative"}]},
        ),
        "a label": _key(model_dir=model_dir, info={**INFO, "labels": ["neg", "pos"]}),
        "precision": _key(model_dir=model_dir, precision="bf16"),
        "device": _key(model_dir=model_dir, device="meta"),
    }
    tokenizer_config = model_dir / "tokenizer_config.json"
    config = json.loads(tokenizer_config.read_text())
    config["model_max_length"] = 123
    tokenizer_config.write_text(json.dumps(config))
    changed["tokenizer file"] = _key(model_dir=model_dir)
    weights = next(model_dir.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of the last weight
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(1, 1))  # a new modification time: the hash is computed again
    changed["weights"] = _key(model_dir=model_dir)
    keys = list(changed.values())
    assert first not in keys, changed
    assert len(set(keys)) == len(keys), changed


def test_hidden_folders_of_the_model_do_not_enter_the_key(model_dir):
    first = _key(model_dir=model_dir)
    (model_dir / ".cache" / "huggingface").mkdir(parents=True)
    (model_dir / ".cache" / "huggingface" / "download.lock").write_text("x")
    assert _key(model_dir=model_dir) == first


def test_unreadable_model_files_mean_no_key(model_dir, monkeypatch):
    def unreadable(path):
        raise PermissionError(path)

    monkeypatch.setattr(base_scores, "sha256_path", unreadable)
    assert _key(model_dir=model_dir) is None


def test_excluded_fields_leave_the_base_figures_unchanged(tiny_model, tiny_tokenizer):
    """What the key rests on: a recipe that differs only in `NOT_SCORING` fields scores the base
    model to the same figures (classification's zero-shot scoring, fp32)."""
    from tuneforge.models import ModelSource
    from tuneforge.tasks import get_task

    task = get_task("classification")
    source = ModelSource(str(tiny_model), tiny_model, "local")

    def figures(recipe):
        return task.evaluate_base(source, tiny_tokenizer, SPLITS, INFO, recipe)

    first = figures(_recipe())
    variants = [
        _recipe(method="full", name="x", lora={"r": 2}, evaluation={"resamples": 200}),
        _recipe(
            training={
                "seed": 5,
                "learning_rate": 0.1,
                "epochs": 1,
                "processes": 1,
                "gradient_checkpointing": True,
                "label_smoothing": 0.1,
                "length_jitter": 1,
            }
        ),
    ]
    for recipe in variants:
        assert figures(recipe) == first


def test_kept_scores_read_back(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_BASE_SCORES", str(tmp_path / "kept"))
    scores = {"validation": {"accuracy": 0.5, "examples": {"label": [1, 0]}}}
    assert base_scores.load("abc", ["validation"]) is None
    base_scores.save("abc", scores, run="run-1", seconds=12.34)
    entry = base_scores.load("abc", ["validation"])
    assert entry["scores"] == scores
    assert (entry["run"], entry["seconds"]) == ("run-1", 12.3)
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["abc.json"]  # no temporary left
    assert base_scores.load("abc", ["validation", "test"]) is None  # not the splits asked for


WHOLE = {"key": "abc", "run": "r", "created": "now", "seconds": 1.0, "scores": {"test": {}}}


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        json.dumps([1]),
        json.dumps({**WHOLE, "key": "other"}),
        json.dumps({k: v for k, v in WHOLE.items() if k != "run"}),
        json.dumps({**WHOLE, "scores": [1]}),
    ],
)
def test_an_unreadable_entry_is_a_miss(tmp_path, monkeypatch, content):
    monkeypatch.setenv("TUNEFORGE_BASE_SCORES", str(tmp_path))
    (tmp_path / "abc.json").write_text(json.dumps(WHOLE))
    assert base_scores.load("abc", ["test"]) is not None  # the whole entry reads
    (tmp_path / "abc.json").write_text(content)
    assert base_scores.load("abc", ["test"]) is None


def test_an_unwritable_cache_does_not_fail_the_run(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("TUNEFORGE_BASE_SCORES", str(blocker / "kept"))  # a file is in the way
    base_scores.save("abc", {}, run="r", seconds=1.0)
    assert base_scores.load("abc", []) is None


def test_the_most_recently_used_entries_are_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_BASE_SCORES", str(tmp_path))
    monkeypatch.setattr(base_scores, "KEEP", 3)
    for i in range(3):
        base_scores.save(f"k{i}", {}, run="r", seconds=1.0)
        os.utime(tmp_path / f"k{i}.json", (1000 + i, 1000 + i))
    assert base_scores.load("k0", []) is not None  # a use: k0 is the newest now
    base_scores.save("k3", {}, run="r", seconds=1.0)
    assert sorted(p.stem for p in tmp_path.glob("*.json")) == ["k0", "k2", "k3"]


def test_a_resumed_run_keeps_where_its_base_figures_came_from(tmp_path):
    """An interrupted run that had reused an earlier run's figures still says so once resumed."""
    from types import SimpleNamespace

    from tuneforge.training.job import _score_base

    origin = {"run": "sweep-1", "created": "2026-12-07 06:00:00", "key": "abc"}
    (tmp_path / "base_metrics.json").write_text(json.dumps({"validation": {"accuracy": 0.5}}))
    (tmp_path / "base_origin.json").write_text(json.dumps(origin))
    setup = SimpleNamespace(recipe=_recipe(), prepared=SimpleNamespace(info=INFO), base_reused=None)
    base, seconds = _score_base(setup, SimpleNamespace(path=tmp_path), {"validation": []})
    assert (base, seconds) == ({"validation": {"accuracy": 0.5}}, None)  # nothing scored again
    assert setup.base_reused == origin
