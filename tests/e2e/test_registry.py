"""Issue 7 (registry part): every run recorded with lineage; named versions; gated promotion."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import assert_check_failed, assert_user_error, run_cli

from tuneforge.runs.provenance import sha256_path


@pytest.fixture
def registry(tmp_path, monkeypatch):
    path = tmp_path / "registry.sqlite"
    monkeypatch.setenv("TUNEFORGE_REGISTRY", str(path))
    return path


def _train(recipe, *sets):
    proc = run_cli(
        "train", recipe, "--set", "baseline.enabled=false", *[a for s in sets for a in ("--set", s)]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_runs_are_recorded_with_lineage_and_promotion_is_gated(
    registry, sentiment_recipe, sentiment_files
):
    from tuneforge.runs import registry as reg

    _train(sentiment_recipe, "name=good", "training.epochs=3")
    _train(sentiment_recipe, "name=bad", "training.max_steps=1", "training.learning_rate=1e-9")
    runs = {r.row["name"]: r for r in reg.list_runs(registry)}
    assert set(runs) == {"good", "bad"} and all(r.status == "finished" for r in runs.values())
    good, bad = runs["good"], runs["bad"]
    data = good.json("data")
    assert data["train"]["sha256"] == sha256_path(sentiment_files["train"])
    assert data["test"]["sha256"] == bad.json("data")["test"]["sha256"]
    assert len(good.row["base_weights_sha256"]) == 64
    assert good.json("versions")["torch"] and good.json("recipe")["name"] == "good"
    good_f1 = good.json("metrics")["tuned"]["test"]["macro_f1"]
    # per-example outcomes on the same test rows: what the gate pairs (no base: baseline off)
    kept = [json.loads(Path(r.path, "outcomes.json").read_text()) for r in (good, bad)]
    assert set(kept[0]) == {"tuned"}
    assert kept[0]["tuned"]["test"]["label"] == kept[1]["tuned"]["test"]["label"]
    bad_f1 = bad.json("metrics")["tuned"]["test"]["macro_f1"]
    assert good_f1 > bad_f1, (good_f1, bad_f1)

    listed = run_cli("runs", "list")
    assert listed.returncode == 0 and good.id in listed.stdout and bad.id in listed.stdout
    shown = run_cli("runs", "show", good.id)
    assert json.loads(shown.stdout)["lineage"] == [good.id]
    compared = run_cli("runs", "compare", good.id, bad.id)
    assert "training.learning_rate" in compared.stdout and "test/macro_f1" in compared.stdout

    assert run_cli("models", "register", "sentiment", good.id).returncode == 0
    assert run_cli("models", "register", "sentiment", good.path).returncode == 0  # a path works too
    assert run_cli("models", "register", "sentiment", bad.id).returncode == 0
    assert run_cli("models", "promote", "sentiment", "1", "--stage", "production").returncode == 0

    refused = run_cli("models", "promote", "sentiment", "3", "--stage", "production")
    # paired over the same test examples (outcomes.json): the verdict names the interval
    assert_check_failed(
        refused, "promotion refused", "macro_f1", "sentiment@1", "--force", "95% CI", "n="
    )
    assert reg.model_version("sentiment", "production", registry)["version"] == 1

    lenient = run_cli(
        "models", "promote", "sentiment", "3", "--stage", "production", "--tolerance", "1.0"
    )
    assert lenient.returncode == 0, lenient.stderr
    assert reg.model_version("sentiment", "production", registry)["version"] == 3
    forced = run_cli("models", "promote", "sentiment", "1", "--stage", "production", "--force")
    assert forced.returncode == 0  # 1 is better than 3: no force needed, not recorded as forced
    forced = run_cli("models", "promote", "sentiment", "3", "--stage", "production", "--force")
    assert forced.returncode == 0 and "forced" in forced.stdout
    kinds = [e["kind"] for e in reg.events(registry)]
    assert kinds.count("promoted_forced") == 1
    stages = {m["version"]: m["stage"] for m in reg.list_models(registry)}
    assert stages == {1: "archived", 2: "none", 3: "production"}

    assert_user_error(run_cli("runs", "rm", bad.id), "registered as sentiment@3")
    listed_models = run_cli("models")
    assert "Registered models" in listed_models.stdout and "production" in listed_models.stdout


def test_killed_run_shows_as_interrupted(registry, tmp_path):
    from tuneforge.runs import registry as reg

    final = tmp_path / "runs" / "x-1"
    partial = tmp_path / "runs" / ".x-1.incomplete"
    partial.mkdir(parents=True)
    (partial / "status.json").write_text(json.dumps({"status": "running", "pid": 2**22 + 12345}))
    reg.record_run("x-1", path=str(final), status="running", created=1.0)
    assert reg.get_run("x-1").status == "interrupted"
    (partial / "status.json").write_text(json.dumps({"status": "running", "pid": os.getpid()}))
    assert reg.get_run("x-1").status == "running"


def test_rm_deletes_an_unregistered_run(registry, sentiment_recipe):
    from tuneforge.runs import registry as reg

    _train(sentiment_recipe, "training.max_steps=1")
    [run] = reg.list_runs(registry)
    assert run_cli("runs", "rm", run.id).returncode == 0
    assert reg.list_runs(registry) == [] and not os.path.exists(run.path)
    assert_user_error(run_cli("runs", "show", run.id), "not in the registry")
