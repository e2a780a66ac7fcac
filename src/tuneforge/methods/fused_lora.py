"""A LoRA linear layer whose adapter branch runs fused into the frozen layer's output.

PEFT computes `base(x) + lora_B(lora_A(dropout(x))) * scaling` as separate tensor operations:
the adapter's full-width output is written, scaled and added to the base output in three more
passes over an (tokens x out_features) tensor, and backward makes the same passes again. On a
CPU these passes are memory-bound, and for SmolLM2's 1536-wide MLP they cost as much as the
small matmuls themselves. `FusedLoraLinear` computes the same function with one autograd node:

- forward: `out = x W^T (+ bias)`, then `out += (scaling * dropout(x) A^T) B^T` accumulated by
  the matmul itself (`addmm_`); the scaling is applied on the rank-r side;
- backward: the input gradient `g W + dropout'((scaling * g B) A)` is one `addmm_` on top of
  the adapter's part, and the A and B gradients are the same products PEFT's autograd forms.

It is the same method (same dropout masks, same gradients up to float rounding order). It runs
only for plain LoRA on a CPU `nn.Linear` with a frozen base weight, one active adapter and
`CheapDropout` or no dropout; anything else (DoRA, merged or disabled adapters, mixed-adapter
batches, CUDA) goes through PEFT's own forward.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from peft.tuners.lora import Linear as LoraLinear
from torch import nn

from tuneforge.methods.lora_dropout import CheapDropout


class _LoraLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling, keep, keep_scale):
        x2 = x.reshape(-1, x.shape[-1])
        dropped = x2 if keep is None else x2.mul(keep.view(x2.shape)).mul_(keep_scale)
        low = dropped @ lora_a.t()  # (tokens, r)
        out = x2 @ weight.t() if bias is None else torch.addmm(bias, x2, weight.t())
        out.addmm_(low, lora_b.t(), alpha=scaling)
        if not ctx.needs_input_grad[0]:
            keep = None  # only the input's gradient reads the mask (not in the first layer)
        ctx.save_for_backward(weight, lora_a, lora_b, dropped, low, keep)
        ctx.scaling, ctx.keep_scale = scaling, keep_scale
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        weight, lora_a, lora_b, dropped, low, keep = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        grad_low = (g @ lora_b).mul_(ctx.scaling)  # (tokens, r)
        grad_x = grad_a = grad_b = None
        if ctx.needs_input_grad[3]:
            grad_a = grad_low.t() @ dropped
        if ctx.needs_input_grad[4]:
            grad_b = (g.t() @ low).mul_(ctx.scaling)
        if ctx.needs_input_grad[0]:
            grad_x = grad_low @ lora_a
            if keep is not None:
                grad_x.mul_(keep.view(grad_x.shape)).mul_(ctx.keep_scale)
            grad_x.addmm_(g, weight)
            grad_x = grad_x.view(*grad.shape[:-1], grad_x.shape[-1])
        return grad_x, None, None, grad_a, grad_b, None, None, None


class FusedLoraLinear(nn.Module):
    """Mixed in before `peft.tuners.lora.Linear` by :func:`use_fused_lora`; same weights."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        adapter = self._fusable(x, args, kwargs)
        if adapter is None:
            return super().forward(x, *args, **kwargs)
        base, dropout = self.base_layer, self.lora_dropout[adapter]
        keep, keep_scale = None, 1.0
        if isinstance(dropout, CheapDropout) and dropout.training and dropout.threshold:
            keep, keep_scale = dropout.keep_mask(x.shape), dropout.scale
        # A bf16 base (CPU bf16 training) keeps its adapters in fp32, the master weights: the
        # product runs in the base's dtype, and the cast's backward hands fp32 gradients back.
        return _LoraLinear.apply(
            x,
            base.weight,
            base.bias,
            self.lora_A[adapter].weight.to(x.dtype),
            self.lora_B[adapter].weight.to(x.dtype),
            self.scaling[adapter],
            keep,
            keep_scale,
        )

    def _fusable(self, x: torch.Tensor, args: tuple, kwargs: dict) -> str | None:
        """The one active adapter when this call can take the fused path, else None."""
        if args or kwargs or self.disable_adapters or self.merged or self.fan_in_fan_out:
            return None
        active = [a for a in self.active_adapters if a in self.lora_A]
        if len(active) != 1 or active[0] in self.lora_variant:
            return None
        adapter = active[0]
        base, a, b = self.base_layer, self.lora_A[adapter], self.lora_B[adapter]
        dropout = self.lora_dropout[adapter]
        plain_dropout = isinstance(dropout, (CheapDropout, nn.Identity)) or not dropout.training
        if (
            type(base) is not nn.Linear
            or base.weight.requires_grad
            or (base.bias is not None and base.bias.requires_grad)
            or b.bias is not None
            or not plain_dropout
            or x.device.type != "cpu"
            or x.dtype != base.weight.dtype
            or a.weight.dtype != b.weight.dtype
            or not (a.weight.dtype == x.dtype or a.weight.dtype == torch.float32)
        ):
            return None
        return adapter


def use_fused_lora(model: nn.Module) -> int:
    """Give every PEFT LoRA `Linear` of `model` the fused forward; returns how many.

    Only the class changes (to a subclass of PEFT's), so parameters, state dicts, saving,
    merging and `isinstance` checks are PEFT's.
    """
    fused = _fused_class(LoraLinear)
    swapped = 0
    for module in model.modules():
        if type(module) is LoraLinear:
            module.__class__ = fused
            swapped += 1
    return swapped


@functools.cache
def _fused_class(linear: type) -> type:
    return type("FusedLoraLinear", (FusedLoraLinear, linear), {"__module__": __name__})
