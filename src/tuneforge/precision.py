"""bf16 on a CPU with native bf16: the frozen base stored in bf16, the rest in fp32.

Autocast alone barely helps on a CPU: it re-casts every fp32 frozen weight at every step
(measured 1.13x on an AMX Xeon, issue #22). Here the frozen base weights are stored in bf16
once, as a GPU run keeps a bf16 base, so the matmuls that dominate a LoRA or freeze step read
bf16 directly; the trainable parameters (LoRA adapters, the classification head, freeze's top
layers) and so the optimizer state stay fp32, the master weights. The Trainer's bf16 autocast
runs the trainable layers' matmuls in bf16 from those fp32 weights; RMSNorm's variance, the
softmax of eager attention and the losses are computed in fp32 (transformers upcasts them).

Attention: torch's fused CPU attention kernel is slower in bf16 than in fp32 for short
sequences, where the plain (eager) attention is faster; the crossover was measured between 128
and 512 tokens (fwd + bwd of one SmolLM2 layer's attention, 2 threads: 128 tokens x16: SDPA 39 ms,
eager 15 ms; 512 tokens x4: SDPA 84 ms, eager 111 ms). Eager attention is also the memory-hungry
one (it keeps the attention matrix), so it is used only up to :data:`EAGER_MAX_LENGTH`.
"""

from __future__ import annotations

import torch
from torch import nn

from tuneforge import devices

EAGER_MAX_LENGTH = 256  # bf16 on a CPU: eager attention up to this max_length, SDPA above


def store_frozen_in(
    model: nn.Module, dtype: torch.dtype = torch.bfloat16, *, trainable: bool = False
) -> int:
    """Cast every frozen floating-point parameter of `model` to `dtype` in place (tied weights
    once), and the trainable ones too when `trainable`; buffers (rotary frequencies) stay as they
    are. Returns how many parameter values were cast."""
    cast = 0
    for param in {id(p): p for p in model.parameters()}.values():
        if (
            (trainable or not param.requires_grad)
            and param.is_floating_point()
            and param.dtype != dtype
        ):
            param.data = param.data.to(dtype)
            cast += param.numel()
    return cast


def precision_of(model: nn.Module) -> torch.dtype:
    """The dtype most of `model`'s parameter values are stored in (bf16 for a bf16 base)."""
    counts: dict[torch.dtype, int] = {}
    for param in model.parameters():
        counts[param.dtype] = counts.get(param.dtype, 0) + param.numel()
    return max(counts, key=counts.__getitem__) if counts else torch.float32


def for_inference(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """A model loaded for inference (predict, eval, the server, base-model scoring) run as its
    training ran on a bf16 CPU: weights stored in `dtype`, the forward under `dtype` autocast,
    its outputs handed back in fp32 (so softmax, metrics and numpy see fp32) - what accelerate
    does to the model during bf16 training, applied to the wrapped transformers model so that
    `generate` (which calls it directly under a PEFT wrapper) runs the same way."""
    from accelerate.utils import convert_outputs_to_fp32  # deferred: only bf16 inference

    store_frozen_in(model, dtype, trainable=True)
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner.forward = convert_outputs_to_fp32(torch.autocast("cpu", dtype=dtype)(inner.forward))
    return model


def cpu_attention(model: nn.Module, max_length: int) -> str | None:
    """Eager attention for bf16 CPU training of short sequences (faster there, see above);
    returns the implementation set, or None where the model's own choice is kept."""
    if max_length > EAGER_MAX_LENGTH or not hasattr(model, "set_attn_implementation"):
        return None
    model.set_attn_implementation("eager")
    return "eager"


def for_training(model: nn.Module, recipe, device: torch.device) -> str:
    """Training in bf16 on a CPU: the frozen base stored in bf16 and short sequences on eager
    attention (the Trainer adds the bf16 autocast). On a GPU, LoRA on a causal LM (sft,
    pretrain) stores its frozen base in bf16 too: half the weights' memory, and the frozen
    matmuls are those autocast computed (it cast the fp32 weights to bf16 every step); the
    adapters stay fp32. Returns the training precision."""
    precision = devices.precision(recipe.training.precision, device, recipe.method)
    if device.type == "cpu" and precision == "bf16":
        store_frozen_in(model, torch.bfloat16)
        cpu_attention(model, recipe.training.max_length)
    elif device.type == "cuda" and precision == "bf16" and gpu_bf16_base(recipe):
        store_frozen_in(model, torch.bfloat16)
    return precision


def gpu_bf16_base(recipe) -> bool:
    """Whether a GPU run stores its frozen base in bf16: LoRA (not QLoRA: its base is 4-bit) on
    the causal-LM tasks, whose PEFT layers cast between the bf16 base and fp32 adapters outside
    autocast too (generation during evaluation, final scoring); classification's fp32 head and
    freeze's fp32 top layers would meet bf16 activations there."""
    return (
        recipe.method == "lora"
        and not recipe.lora.quantize_base
        and recipe.task in ("sft", "pretrain")
    )


def ready_for_inference(model: nn.Module, device: torch.device, precision: str) -> nn.Module:
    """A model loaded for inference, on `device`, in `precision` (fp32, or bf16 on a CPU:
    :func:`tuneforge.devices.inference_precision` decides)."""
    model = devices.place(model, device)
    if precision == "bf16" and device.type == "cpu":
        for_inference(model)
    return model
