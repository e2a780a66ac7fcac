"""Where models and tensors live: one place picks the device and the precision.

Every model call moves its inputs to the model's device (:func:`to_device`), and every result
comes back to the CPU before numpy sees it. A model loaded for inference (base-model scoring,
predict, eval, the bias probe, the server, export checks) goes to :func:`inference_device`: the
GPU when there is one, unless a recipe's `device` or a command's `--device` says otherwise.
Training leaves placement to the Trainer, which takes the same choice (`use_cpu`).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from typing import Any

import torch

from tuneforge import cpu_bf16, kernels, padding_free
from tuneforge.errors import TuneforgeError

ENV_DEVICE = "TUNEFORGE_DEVICE"  # a default for every command, below a recipe's or --device


def cuda_available() -> bool:
    return torch.cuda.is_available()


def resolve(requested: str | None = None) -> torch.device:
    """`auto` (the default): this process's GPU when torch sees one (cuda:LOCAL_RANK under
    torchrun), else the CPU. `cuda` is this process's GPU; `cpu` and `cuda:N` are taken as given;
    a GPU that is not there is refused."""
    requested = (requested or os.environ.get(ENV_DEVICE) or "auto").strip().lower()
    if requested == "auto":
        return local_gpu() if cuda_available() else torch.device("cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError):
        raise TuneforgeError(
            f"device: '{requested}' is not a device", hint="use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise TuneforgeError(
            f"device: '{requested}' is not supported", hint="use auto, cpu, cuda or cuda:N"
        )
    if not cuda_available():
        raise TuneforgeError(
            f"device: {requested} asked for, but torch sees no CUDA GPU on this machine",
            hint="use device: auto (or cpu)",
        )
    if device.index is None:
        return local_gpu()
    if device.index >= torch.cuda.device_count():
        raise TuneforgeError(
            f"device: {requested} asked for, but this machine has {torch.cuda.device_count()} GPU(s)"
        )
    return device


def local_gpu() -> torch.device:
    """This process's GPU: the one torchrun / accelerate assigned (LOCAL_RANK), else the first."""
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def require_hardware_for(recipe) -> None:
    """fp16 and a 4-bit base need a CUDA GPU (and bitsandbytes), bf16 a GPU or a CPU with native
    bf16, Liger kernels a GPU and the package: one clear error otherwise."""
    tc = recipe.training
    device = resolve(recipe.device)
    on_gpu = device.type == "cuda"
    if on_gpu and device != local_gpu():
        raise TuneforgeError(
            f"device: {recipe.device}: training runs on this process's GPU ({local_gpu()})",
            hint=f"to train on GPU {device.index}, run with CUDA_VISIBLE_DEVICES={device.index} "
            "and device: auto (torchrun / accelerate launch give each process its own GPU)",
        )
    if tc.precision == "fp16" and not on_gpu:
        raise TuneforgeError(
            "training.precision: fp16 needs a CUDA GPU and "
            + ("none is available" if not torch.cuda.is_available() else "device is cpu"),
            hint="use training.precision: auto (bf16 where this CPU computes it natively, else "
            "fp32) or fp32",
        )
    if tc.precision == "bf16" and not on_gpu:
        cpu = cpu_bf16.detect()
        if not cpu.native:
            raise TuneforgeError(
                f"training.precision: bf16 on a CPU needs native bf16 arithmetic, and {cpu.cpu} "
                "has none (neither AVX512-BF16 nor AMX-BF16)",
                hint="use training.precision: fp32 (or auto): without native bf16 mixed precision "
                "is emulated, measured about 36x slower than fp32",
            )
    kernels.choose(tc.kernels, device)  # liger asked for where it cannot run: refused now
    padding_free.wanted(recipe, device)  # asked for where it does not apply: refused now
    if recipe.lora.quantize_base:
        if recipe.method != "lora":
            raise TuneforgeError(
                f"lora.quantize_base: a 4-bit base is for LoRA (QLoRA), not method: {recipe.method}",
                hint="set method: lora (or method: qlora), or remove lora.quantize_base",
            )
        if not on_gpu:
            raise TuneforgeError(
                "lora.quantize_base: 4bit (QLoRA) needs a CUDA GPU and none is available",
                hint="bitsandbytes 4-bit kernels run on CUDA; on a CPU use method: lora without "
                "quantize_base (the 135M default model fits easily in fp32)",
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            raise TuneforgeError(
                "lora.quantize_base: 4bit (QLoRA) needs the bitsandbytes package",
                hint="pip install bitsandbytes",
            )


def precision(requested: str, device: torch.device, method: str = "lora") -> str:
    """`auto`: bf16 mixed precision on a GPU that supports it; on a CPU, bf16 where the CPU
    computes it natively and measured faster (:mod:`tuneforge.cpu_bf16`) for the methods that
    keep a frozen base (lora, freeze), fp32 for full fine-tuning; else fp32 (a CPU without native
    bf16 runs it about 36x slower; an older GPU's fp16 needs loss scaling that fp32 avoids)."""
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if method != "full" and cpu_bf16.detect().usable:
        return "bf16"
    return "fp32"


def inference_precision(trained: str, device: torch.device) -> str:
    """The precision a model that trained in `trained` runs in for inference on `device`: bf16
    on a CPU for a bf16 run where this CPU computes bf16 natively and faster (the numerics of its
    training's evaluations), fp32 otherwise (a GPU, older runs, a CPU without native bf16)."""
    if trained == "bf16" and device.type == "cpu" and cpu_bf16.detect().usable:
        return "bf16"
    return "fp32"


def recipe_training_precision(recipe) -> str:
    """The precision `recipe` trains in here (`training.precision`, `auto` resolved: `precision`
    above)."""
    return precision(recipe.training.precision, resolve(recipe.device), recipe.method)


def recipe_inference_precision(recipe) -> str:
    """:func:`inference_precision` of a run of `recipe` trained here (`precision` above)."""
    return inference_precision(recipe_training_precision(recipe), resolve(recipe.device))


def model_device(model) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model without either."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """A batch with every tensor on `device` (other values as they are)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def place(model, device: torch.device):
    """Move a model loaded for inference to `device` (a no-op where it already is)."""
    return model if model_device(model) == device else model.to(device)


def empty_cache() -> None:
    """Give the GPU memory of models already let go (`del`) back, for the next one and for other
    processes; a no-op without a GPU."""
    if cuda_available():
        torch.cuda.empty_cache()


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work, so a wall-clock time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
