"""Fused GPU kernels for training (`training.kernels`): Liger's Triton kernels, where installed.

Liger (`pip install tuneforge[liger]`, the `liger-kernel` package; it pulls Triton, so it is an
optional extra for CUDA machines and not in the CPU lock) replaces a Llama's RMSNorm, SwiGLU MLP
and rotary embedding with fused kernels, and its fused linear cross-entropy computes the loss
from the last hidden states chunk by chunk, never holding the (tokens x vocabulary) logits.

- `auto` applies it where training runs on CUDA and `liger_kernel` imports; `liger` asks for it
  and is refused with one clear message elsewhere; `none` leaves the model as transformers
  builds it. Model types Liger does not know are left alone (it says so in its log).
- The fused cross-entropy goes with padding-free batches only. It reads the output layer's
  weight directly, so the forward pre-hook that keeps only the labelled (row, position) pairs of
  a padded sft batch (answer_forward.py) would never run; a padding-free batch is one row whose
  kept positions are exactly the labelled ones, which it computes as they are. Without them,
  the other kernels still apply.
- Liger patches transformers' module-level functions (RoPE) as well as the model's modules, so
  every model of that family in the process uses them afterwards: that is why it is applied
  only in CUDA training runs.
"""

from __future__ import annotations

import importlib.util

import torch

from tuneforge import padding_free
from tuneforge.errors import TuneforgeError

PACKAGE = "liger_kernel"
INSTALL = "pip install 'tuneforge[liger]' (or pip install liger-kernel)"


def liger_available() -> bool:
    return importlib.util.find_spec(PACKAGE) is not None


def choose(requested: str, device: torch.device) -> str:
    """The kernels a run on `device` uses: `liger` or `none` (`auto` resolved; an explicit
    `liger` that cannot run here is a recipe error)."""
    if requested == "none":
        return "none"
    if requested == "liger":
        if device.type != "cuda":
            raise TuneforgeError(
                f"training.kernels: liger runs on CUDA GPUs (Triton kernels), and this run "
                f"trains on {device}",
                hint="use training.kernels: auto (liger where it can run) or none",
            )
        if not liger_available():
            raise TuneforgeError(
                "training.kernels: liger asked for, but the liger-kernel package is not installed",
                hint=f"{INSTALL}, or use training.kernels: auto",
            )
        return "liger"
    return "liger" if device.type == "cuda" and liger_available() else "none"


def apply(model, requested: str, device: torch.device, *, fused_cross_entropy: bool) -> str:
    """Apply the chosen kernels to `model` (PEFT-wrapped or not) in place; returns which."""
    kind = choose(requested, device)
    if kind == "liger":
        apply_liger(model, fused_cross_entropy=fused_cross_entropy)
    return kind


def for_training(model, recipe, device: torch.device) -> str:
    """The recipe's kernels on a model built for training on `device` (the fused cross-entropy
    with padding-free batches only, see above); returns which were applied."""
    flat = padding_free.wanted(recipe, device) and not recipe.training.label_smoothing
    return apply(model, recipe.training.kernels, device, fused_cross_entropy=flat)


def liger_settings(fused_cross_entropy: bool) -> dict[str, bool]:
    """Liger's keyword arguments (its per-family functions take those they know)."""
    return {
        "rope": True,
        "rms_norm": True,
        "swiglu": True,
        "geglu": True,
        "cross_entropy": False,
        "fused_linear_cross_entropy": fused_cross_entropy,
    }


def apply_liger(model, *, fused_cross_entropy: bool) -> None:
    from liger_kernel.transformers import (  # deferred: optional CUDA extra (pulls Triton)
        _apply_liger_kernel_to_instance,
    )

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    _apply_liger_kernel_to_instance(model=base, **liger_settings(fused_cross_entropy))
