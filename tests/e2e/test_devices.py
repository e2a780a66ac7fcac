"""Every place a tensor meets a model puts it on the model's device, without a GPU to show it.

CI has no GPU, so the model is sent to PyTorch's `meta` device, a second device every machine
has: `devices.resolve` answers `meta` where it would answer `cuda:0`, so every model loaded for
inference goes there, exactly as it would go to a GPU. A forward pre-hook on the model checks
that every tensor it receives is on `meta` too, then stops the call with :class:`ReachedModel`
(meta tensors hold no values, so nothing could be computed after it). A path that leaves an input
on the CPU (the bug seen on an H200: classification scoring fed CPU tensors to a `cuda:0` model)
fails here with the input named.

What this cannot see: results coming back to the CPU (`.cpu()` before numpy); the GPU check
(`scripts/gpu_check.py`) runs the real thing on a GPU.
"""

from __future__ import annotations

import os

import pytest
import torch
from conftest import sentiment_rows, write_csv, write_jsonl

from tuneforge import devices

META = torch.device("meta")


class ReachedModel(Exception):
    """The model's forward was called with every tensor input on the model's device."""


def _check_inputs(module, args, kwargs):
    tensors = {
        **{f"arg{i}": a for i, a in enumerate(args) if isinstance(a, torch.Tensor)},
        **{k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)},
    }
    wrong = {name: str(t.device) for name, t in tensors.items() if t.device != META}
    assert not wrong, f"inputs not on the model's device (meta): {wrong}"
    assert tensors, "the model was called without tensor inputs"
    raise ReachedModel


@pytest.fixture
def on_meta(monkeypatch):
    """Models for inference go to `meta` (where they would go to the GPU) and check their inputs."""
    monkeypatch.setattr(devices, "resolve", lambda requested=None: META)
    place = devices.place

    def place_and_check(model, device):
        model = place(model, device)
        model.register_forward_pre_hook(_check_inputs, with_kwargs=True)
        # generate() reads values (.item()) before its first forward: check its inputs instead
        model.generate = lambda *args, **kwargs: _check_inputs(model, args, kwargs)
        return model

    monkeypatch.setattr(devices, "place", place_and_check)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model):
    """A classification and an sft run of the tiny model (2 steps each), trained on the CPU."""
    import tuneforge

    tmp = tmp_path_factory.mktemp("devices")
    train = write_csv(tmp / "train.csv", sentiment_rows(16))
    validation = write_csv(tmp / "validation.csv", sentiment_rows(4, offset=100))
    chats = [
        {"prompt": f"Summarise report {i}", "completion": f"Report {i} is fine."} for i in range(16)
    ]
    sft_train = write_jsonl(tmp / "sft_train.jsonl", chats)
    sft_validation = write_jsonl(tmp / "sft_validation.jsonl", chats[:4])
    common = (
        f"base_model: {tiny_model}\noutput_dir: {tmp / 'runs'}\nlora: {{r: 4, alpha: 8}}\n"
        "data_checks: {leakage: off, duplicates: off}\n"
    )
    (tmp / "cls.yaml").write_text(
        "name: dev-cls\ntask: classification\n"
        f"data: {{train: {train}, validation: {validation}}}\n" + common
    )
    (tmp / "sft.yaml").write_text(
        "name: dev-sft\ntask: sft\nsft: {generation_examples: 0}\n"
        f"data: {{train: {sft_train}, validation: {sft_validation}}}\n" + common
    )
    os.environ.setdefault("TUNEFORGE_REGISTRY", str(tmp / "registry.sqlite"))
    overrides = ["training.max_steps=2", "training.batch_size=8", "baseline.enabled=false"]
    return {kind: tuneforge.train(tmp / f"{kind}.yaml", overrides).path for kind in ("cls", "sft")}


def _reaches_model(call) -> None:
    with pytest.raises(ReachedModel):
        call()


def test_classification_predict_and_eval_feed_the_models_device(runs, on_meta, tmp_path):
    from tuneforge.runs.run import Run

    run = Run.load(runs["cls"])
    assert devices.model_device(run.model) == META  # loaded for inference where the GPU would be
    _reaches_model(lambda: run.predict(["a fine film"]))
    data = write_csv(tmp_path / "data.csv", sentiment_rows(4, offset=300))
    _reaches_model(lambda: run.evaluate(data))
    _reaches_model(lambda: run.bias_probe(save=False))


def test_base_model_zero_shot_feeds_the_models_device(runs, on_meta):
    from tuneforge.runs.run import Run

    run = Run.load(runs["cls"])
    rows = sentiment_rows(4, offset=300)
    _reaches_model(
        lambda: run.task.evaluate_base(
            run.source, run.tokenizer, {"data": rows}, run.meta["info"], run.recipe
        )
    )


def test_generation_and_loss_feed_the_models_device(runs, on_meta):
    from tuneforge.runs.run import Run

    run = Run.load(runs["sft"])
    _reaches_model(lambda: run.generate("Summarise report 3", max_new_tokens=2))
    _reaches_model(lambda: run.predict(["Summarise report 3"]))
    rows = [{"prompt": "Summarise report 3", "completion": "Report 3 is fine."}]
    _reaches_model(
        lambda: run.task.evaluate_base(
            run.source, run.tokenizer, {"data": rows}, run.meta["info"], run.recipe
        )
    )


def test_export_check_runs_on_the_fine_tuned_models_device(runs, tiny_model):
    """The export check: the reference fingerprint and the reloaded copy, on one device."""
    from transformers import AutoModelForSequenceClassification

    from tuneforge.deploy.export import compare, fingerprint

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2)
    model.to(META).register_forward_pre_hook(_check_inputs, with_kwargs=True)
    ids = torch.tensor([[1, 2, 3]])
    _reaches_model(lambda: fingerprint(model, ids, "classification"))
    reloaded = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2)
    reloaded.register_forward_pre_hook(_check_inputs, with_kwargs=True)
    _reaches_model(lambda: compare({"ids": ids.to(META)}, reloaded, "reload", "classification"))


def test_the_check_catches_an_input_left_on_the_cpu(runs, on_meta):
    """The hook itself: a forward with a CPU input on a meta model is named, not passed."""
    from tuneforge.runs.run import Run

    model = Run.load(runs["cls"]).model
    with pytest.raises(AssertionError, match="input_ids"):
        model(input_ids=torch.tensor([[1, 2, 3]]))


# ------------------------------------------------------------------------------------------------
# The choices that depend on the device


def test_resolve_and_precision(monkeypatch):
    monkeypatch.delenv(devices.ENV_DEVICE, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.resolve() == torch.device("cpu")
    assert devices.resolve("auto") == torch.device("cpu")
    assert devices.precision("auto", torch.device("cpu")) == "fp32"
    from tuneforge.errors import TuneforgeError

    with pytest.raises(TuneforgeError, match="no CUDA GPU"):
        devices.resolve("cuda")
    with pytest.raises(TuneforgeError, match="not a device"):
        devices.resolve("gpu0")
    monkeypatch.setenv(devices.ENV_DEVICE, "cpu")
    assert devices.resolve() == torch.device("cpu")

    monkeypatch.delenv(devices.ENV_DEVICE)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert devices.resolve() == torch.device("cuda", 1)  # this rank's GPU under torchrun
    assert devices.resolve("cuda") == torch.device("cuda", 1)
    assert devices.resolve("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(TuneforgeError, match="2 GPU"):
        devices.resolve("cuda:5")
    assert devices.precision("auto", torch.device("cuda", 1)) == "bf16"
    assert devices.precision("fp16", torch.device("cuda", 1)) == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert devices.precision("auto", torch.device("cuda", 0)) == "fp32"


def test_processes_auto_is_one_on_a_gpu_and_n_is_refused_there(monkeypatch, tiny_model, tmp_path):
    from tuneforge.config import TrainingConfig, validate_recipe
    from tuneforge.errors import TuneforgeError
    from tuneforge.training import launch

    monkeypatch.setattr(launch, "cores", lambda: 2)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv(launch.ENV_PROCESSES, raising=False)
    tc = TrainingConfig(batch_size=16, processes="auto")
    assert launch.wanted(tc) == 2
    assert launch.wanted(tc, on_gpu=True) == 1

    def recipe(processes, device="auto"):
        return validate_recipe(
            {
                "name": "x",
                "base_model": str(tiny_model),
                "task": "classification",
                "data": {"train": "t.csv", "validation_split": 0.2},
                "device": device,
                "training": {"batch_size": 16, "processes": processes},
            }
        )

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert launch.processes(recipe("auto")) == 1  # shipped recipes run unchanged
    with pytest.raises(TuneforgeError, match="training.processes: 2") as e:
        launch.processes(recipe(2))
    assert "device: cpu" in e.value.hint
    assert launch.processes(recipe(2, device="cpu")) == 2


def test_cpu_speed_ups_only_where_training_runs_on_the_cpu(tiny_model):
    """CheapDropout and FusedLoraLinear were measured on CPUs; a GPU keeps PEFT's own layers."""
    from peft.tuners.lora import Linear as LoraLinear
    from transformers import AutoModelForCausalLM

    from tuneforge.config import FreezeConfig, LoraConfig
    from tuneforge.methods import apply_method
    from tuneforge.methods.fused_lora import FusedLoraLinear
    from tuneforge.methods.lora_dropout import CheapDropout

    def lora_layers(device):
        model = AutoModelForCausalLM.from_pretrained(tiny_model)
        model = apply_method(
            model,
            "lora",
            LoraConfig(r=4, alpha=8, dropout=0.1),
            FreezeConfig(),
            "CAUSAL_LM",
            device,
        )
        return [m for m in model.modules() if isinstance(m, LoraLinear)]

    on_cpu = lora_layers(torch.device("cpu"))
    assert on_cpu and all(isinstance(m, FusedLoraLinear) for m in on_cpu)
    assert all(isinstance(m.lora_dropout["default"], CheapDropout) for m in on_cpu)
    on_gpu = lora_layers(torch.device("cuda", 0))  # built on the CPU, trained on the GPU
    assert on_gpu and not any(isinstance(m, FusedLoraLinear) for m in on_gpu)
    assert not any(isinstance(m.lora_dropout["default"], CheapDropout) for m in on_gpu)


def test_training_on_another_processes_gpu_is_refused(monkeypatch, tiny_model):
    """The Trainer trains on this process's GPU; `device: cuda:N` elsewhere says how instead."""
    from tuneforge.config import validate_recipe
    from tuneforge.devices import require_hardware_for
    from tuneforge.errors import TuneforgeError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    raw = {
        "name": "x",
        "base_model": str(tiny_model),
        "task": "classification",
        "data": {"train": "t.csv", "validation_split": 0.2},
    }
    require_hardware_for(validate_recipe({**raw, "device": "cuda:0"}))
    with pytest.raises(TuneforgeError, match="cuda:1") as e:
        require_hardware_for(validate_recipe({**raw, "device": "cuda:1"}))
    assert "CUDA_VISIBLE_DEVICES=1" in e.value.hint
