"""Experiment tracking: `training.report_to` feeds the Trainer's MLflow and TensorBoard integrations.

A real MLflow tracking server runs on loopback; a tiny run is trained through the CLI and read back
with MlflowClient and TensorBoard's EventAccumulator, against the run's own metrics.json.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import assert_user_error, run_cli, sentiment_rows, write_csv

EXPERIMENT = "tuneforge-e2e"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    pytest.importorskip("mlflow")
    tmp = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    log = (tmp / "server.log").open("w")
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "mlflow", "server"),
            *("--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}"),
            *("--default-artifact-root", str(tmp / "artifacts")),
            *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its uvicorn worker goes with it at the end
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300  # a cold start (imports, database migrations) is slow on 2 CPUs
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited: {(tmp / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail("mlflow server did not answer /health")
            time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, tiny_model, mlflow_server):
    tmp = tmp_path_factory.mktemp("tracked")
    train = write_csv(tmp / "train.csv", sentiment_rows(16))
    val = write_csv(tmp / "val.csv", sentiment_rows(8, offset=100))
    recipe = tmp / "r.yaml"
    recipe.write_text(
        f"name: tracked\nbase_model: {tiny_model}\ntask: classification\n"
        f"data: {{train: {train}, validation: {val}}}\nlora: {{r: 4, alpha: 8}}\n"
        "training: {max_steps: 6, batch_size: 4, learning_rate: 1.0e-2, eval_steps: 2,\n"
        "           logging_steps: 1, report_to: [tensorboard, mlflow]}\n"
        f"baseline: {{enabled: false}}\noutput_dir: {tmp / 'runs'}\n"
    )
    env = {"MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_EXPERIMENT_NAME": EXPERIMENT}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        proc = run_cli("train", recipe, cwd=tmp)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert proc.returncode == 0, proc.stderr[-3000:]
    [run] = [p for p in (tmp / "runs").iterdir() if not p.name.startswith(".")]
    return run, json.loads((run / "metrics.json").read_text())


def test_mlflow_server_has_the_run_params_and_metrics(tracked_run, mlflow_server):
    from mlflow.tracking import MlflowClient

    run_dir, metrics = tracked_run
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    [logged] = client.search_runs([experiment.experiment_id])
    assert logged.info.run_name == run_dir.name  # the tuneforge run id
    assert logged.info.status == "FINISHED"
    params = logged.data.params
    assert params["learning_rate"] == "0.01"
    assert params["per_device_train_batch_size"] == "4"
    assert params["max_steps"] == "6"
    assert params["run_name"] == run_dir.name

    def history(key: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in client.get_metric_history(logged.info.run_id, key))

    evaluations = metrics["evaluations"]
    assert [e["step"] for e in evaluations] == [2, 4, 6]
    assert history("eval_loss") == [(e["step"], e["loss"]) for e in evaluations]
    assert history("eval_accuracy") == [(e["step"], e["accuracy"]) for e in evaluations]
    train_losses = [(h["step"], h["loss"]) for h in metrics["log_history"] if "loss" in h]
    assert len(train_losses) == 6
    assert history("loss") == train_losses


def test_tensorboard_events_in_the_run_folder(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, metrics = tracked_run
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert {"train/loss", "eval/loss", "eval/accuracy"} <= set(events.Tags()["scalars"])
    logged = [(s.step, s.value) for s in events.Scalars("eval/loss")]
    expected = [(e["step"], e["loss"]) for e in metrics["evaluations"]]
    assert [step for step, _ in logged] == [step for step, _ in expected]
    for (_, got), (_, want) in zip(logged, expected, strict=True):
        assert got == pytest.approx(want, rel=1e-6)  # TensorBoard stores float32


def test_missing_tracker_package_names_the_pip_install(monkeypatch):
    from tuneforge.errors import TuneforgeError
    from tuneforge.training import tracking

    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(
        tracking.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "mlflow" else real(name, *a),
    )
    tracking.check_available(["tensorboard"])
    with pytest.raises(TuneforgeError) as e:
        tracking.check_available(["tensorboard", "mlflow"])
    assert e.value.message == (
        "training.report_to: 'mlflow' is chosen but the mlflow package is not installed"
    )
    assert e.value.hint.startswith("pip install mlflow")


def test_unknown_tracker_is_a_recipe_error(sentiment_recipe, tmp_path):
    proc = run_cli("train", sentiment_recipe, "--set", "training.report_to=[wandb]")
    assert_user_error(proc, "--set training.report_to=[wandb]", "training.report_to.0")
    assert not (tmp_path / "runs").exists()


def test_report_to_accepts_one_name_or_none():
    from tuneforge.config import TrainingConfig

    assert TrainingConfig(report_to="mlflow").report_to == ["mlflow"]
    assert TrainingConfig(report_to="none").report_to == []
    assert TrainingConfig().report_to == []


def test_trackers_need_the_package_before_any_compute(tmp_path: Path, tiny_model, monkeypatch):
    """Checked right after the recipe is read: no run folder, no model loaded."""
    from tuneforge import train
    from tuneforge.errors import TuneforgeError
    from tuneforge.training import tracking

    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name, *a: None)
    train_csv = write_csv(tmp_path / "train.csv", sentiment_rows(8))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"name: t\nbase_model: {tiny_model}\ntask: classification\n"
        f"data: {{train: {train_csv}, validation_split: 0.25}}\n"
        f"training: {{report_to: tensorboard}}\noutput_dir: {tmp_path / 'runs'}\n"
    )
    with pytest.raises(TuneforgeError, match="pip install tensorboard"):
        train(recipe)
    assert not (tmp_path / "runs").exists()
