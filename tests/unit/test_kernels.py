"""Which fused kernels a run uses (kernels.py): Liger on CUDA where installed, a clear refusal
where asked for and impossible, never on a CPU; torch.compile only when asked for. Runs without a
GPU and without liger-kernel: availability is mocked, and a fake `liger_kernel` module records
what would be applied."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from tuneforge import kernels
from tuneforge.config import validate_recipe
from tuneforge.errors import TuneforgeError
from tuneforge.precision import gpu_bf16_base
from tuneforge.training.trainer import training_arguments

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


def _recipe(task: str = "sft", method: str = "lora", **training):
    return validate_recipe(
        {
            "name": "r",
            "task": task,
            "method": method,
            "data": {"train": "t.jsonl", "validation": "v.jsonl"},
            "training": training,
        }
    )


@pytest.mark.parametrize(
    ("requested", "device", "installed", "chosen"),
    [
        ("auto", CUDA, True, "liger"),
        ("auto", CUDA, False, "none"),  # never required
        ("auto", CPU, True, "none"),  # Triton kernels: CUDA only
        ("none", CUDA, True, "none"),
        ("liger", CUDA, True, "liger"),
    ],
)
def test_auto_means_liger_on_cuda_where_installed(
    monkeypatch, requested, device, installed, chosen
):
    monkeypatch.setattr(kernels, "liger_available", lambda: installed)
    assert kernels.choose(requested, device) == chosen


def test_asking_for_liger_without_the_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(kernels, "liger_available", lambda: False)
    with pytest.raises(TuneforgeError) as e:
        kernels.choose("liger", CUDA)
    assert "training.kernels: liger" in e.value.message and "not installed" in e.value.message
    assert "tuneforge[liger]" in e.value.hint


def test_asking_for_liger_on_a_cpu_is_refused(monkeypatch):
    monkeypatch.setattr(kernels, "liger_available", lambda: True)
    with pytest.raises(TuneforgeError, match="CUDA"):
        kernels.choose("liger", CPU)


def test_the_recipe_is_refused_before_any_data_is_read(monkeypatch):
    from tuneforge import devices

    monkeypatch.setattr(kernels, "liger_available", lambda: False)
    with pytest.raises(TuneforgeError, match="training.kernels: liger"):
        devices.require_hardware_for(_recipe(kernels="liger", precision="fp32"))
    with pytest.raises(TuneforgeError, match="training.padding_free"):
        devices.require_hardware_for(_recipe("classification", padding_free=True))


@pytest.fixture
def fake_liger(monkeypatch):
    """A stand-in `liger_kernel.transformers` that records its calls."""
    calls: list[dict] = []
    transformers_mod = types.ModuleType("liger_kernel.transformers")
    transformers_mod._apply_liger_kernel_to_instance = lambda model, **kw: calls.append(
        {"model": model, **kw}
    )
    package = types.ModuleType("liger_kernel")
    package.transformers = transformers_mod
    monkeypatch.setitem(sys.modules, "liger_kernel", package)
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", transformers_mod)
    monkeypatch.setattr(kernels, "liger_available", lambda: True)
    return calls


class _Peft:
    def __init__(self, base):
        self.base = base

    def get_base_model(self):
        return self.base


@pytest.mark.parametrize(
    ("settings", "fused"),
    [
        ({}, True),  # auto padding-free on CUDA: one row, the fused loss computes it as is
        ({"padding_free": False}, False),  # padded sft rows: the labelled-rows hook needs the head
        ({"label_smoothing": 0.1}, False),  # the Trainer's smoother needs the logits
    ],
)
def test_liger_is_applied_to_the_transformers_model_under_peft(fake_liger, settings, fused):
    base = object()
    applied = kernels.for_training(_Peft(base), _recipe(**settings), CUDA)
    assert applied == "liger"
    (call,) = fake_liger
    assert call["model"] is base
    assert call["fused_linear_cross_entropy"] is fused
    assert call["rms_norm"] and call["swiglu"] and call["rope"] and not call["cross_entropy"]


def test_nothing_is_applied_on_a_cpu(fake_liger):
    assert kernels.for_training(_Peft(object()), _recipe(), CPU) == "none"
    assert fake_liger == []


def test_compile_only_when_asked(tmp_path):
    recipe = _recipe(precision="fp32")
    assert not training_arguments(recipe, tmp_path, "loss").torch_compile
    compiled = _recipe(precision="fp32", compile=True)
    assert training_arguments(compiled, tmp_path, "loss").torch_compile


@pytest.mark.parametrize(
    ("task", "method", "settings", "bf16_base"),
    [
        ("sft", "lora", {}, True),
        ("pretrain", "lora", {}, True),
        ("classification", "lora", {}, False),  # an fp32 head meets the activations
        ("sft", "freeze", {}, False),
        ("sft", "lora", {"lora": {"quantize_base": "4bit"}}, False),
    ],
)
def test_which_gpu_runs_store_the_frozen_base_in_bf16(task, method, settings, bf16_base):
    raw = {
        "name": "r",
        "task": task,
        "method": method,
        "data": {"train": "t.jsonl", "validation": "v.jsonl"},
        **settings,
    }
    assert gpu_bf16_base(validate_recipe(raw)) is bf16_base
