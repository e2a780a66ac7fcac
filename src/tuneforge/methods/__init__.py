"""Which parameters train, one module per method: `lora` (PEFT adapters, with the CPU's fused
layer and cheap dropout), `freeze` (only the top layers), `qlora` (LoRA on a 4-bit base).

This module dispatches a recipe's `method` and holds what every method shares.
"""

from __future__ import annotations

import torch
from torch import nn

from tuneforge.config import FreezeConfig, LoraConfig, MethodName
from tuneforge.methods.freeze import freeze_bottom
from tuneforge.methods.lora import apply_lora


def apply_method(
    model: nn.Module,
    method: MethodName,
    lora: LoraConfig,
    freeze: FreezeConfig,
    peft_task_type: str,
    device: torch.device | None = None,
) -> nn.Module:
    """`device`: where the model will train (None: the CPU); it decides the CPU-only speed-ups."""
    if method == "lora":
        return apply_lora(model, lora, peft_task_type, device)
    if method == "freeze":
        freeze_bottom(model, freeze.trainable_layers)
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters, counting tied weights once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def enable_gradient_checkpointing(model: nn.Module, method: MethodName) -> None:
    """Recompute each layer in backward instead of keeping its activations.

    With LoRA the embeddings are frozen, so the first checkpointed layer's input would not
    require grad and (with reentrant checkpointing) no gradient would reach the adapters;
    `enable_input_require_grads` makes the embedding output require grad, as PEFT recommends.
    """
    # transformers' current name (`gradient_checkpointing_enable` warns: removed in v6); a PEFT
    # model hands the call on to the model it wraps.
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if method == "lora" and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
    if getattr(model, "config", None) is not None:
        model.config.use_cache = False  # a KV cache is useless in training and clashes with it


__all__ = ["apply_method", "count_parameters", "enable_gradient_checkpointing"]
