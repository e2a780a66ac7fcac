"""LoRA dropout with a mask that is cheap to draw on a CPU.

PEFT puts an `nn.Dropout` in front of every adapter (7 per decoder layer with `all-linear`).
On CPU, torch draws its Bernoulli mask at about 80M values/s: measured on this project's 2-core
machine, dropout 0.05 made a LoRA step of SmolLM2-135M 1.13-1.23x slower than no dropout.
`CheapDropout` draws the same mask from numpy's PCG64 (16-bit integers, 2.8x faster per call
with the multiply) and keeps every property the Trainer relies on:

- same distribution: an element is dropped with probability `round(p * 65536) / 65536`
  (0.050003 for p = 0.05) and the kept ones are scaled so the expectation is unchanged;
- reproducible and exactly resumable: each call seeds its generator with a number drawn from
  torch's global generator, which `set_seed` sets and the Trainer's checkpoints save;
- less memory: backward keeps a boolean mask, where `nn.Dropout` on CPU keeps a float32 one
  (measured with saved_tensors_hooks: 3 bytes less per masked element).

On other devices (CUDA), or when not training, it behaves exactly as `nn.Dropout`.
"""

from __future__ import annotations

import numpy as np
import torch
from peft.tuners.lora import LoraLayer
from torch import nn

_LEVELS = 1 << 16  # the mask is drawn as uniform 16-bit integers


class _ApplyMask(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return x.mul(keep).mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return grad.mul(keep).mul_(ctx.scale), None, None


class CheapDropout(nn.Dropout):
    """`nn.Dropout` whose CPU training mask comes from numpy's PCG64 generator."""

    def __init__(self, p: float = 0.5):
        super().__init__(p)
        self.threshold = round(p * _LEVELS)  # integers below it are dropped
        self.scale = _LEVELS / (_LEVELS - self.threshold) if self.threshold < _LEVELS else 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.threshold == 0:
            return x
        if x.device.type != "cpu":
            return super().forward(x)
        return _ApplyMask.apply(x, self.keep_mask(x.shape), self.scale)

    def keep_mask(self, shape: torch.Size) -> torch.Tensor:
        """A bool CPU mask of `shape`: True where an element is kept (then scaled by `self.scale`)."""
        seed = int(torch.randint(0, 2**62, (1,)).item())
        draws = np.random.Generator(np.random.PCG64(seed)).integers(
            0, _LEVELS, tuple(shape), dtype=np.uint16
        )
        return torch.from_numpy(draws >= self.threshold)


def use_cheap_dropout(model: nn.Module) -> int:
    """Swap every LoRA adapter's `nn.Dropout` for :class:`CheapDropout`; returns how many.

    The modules hold no weights, so saved adapters and checkpoints are unchanged.
    """
    swapped = 0
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        for name, dropout in module.lora_dropout.items():
            if type(dropout) is nn.Dropout:
                module.lora_dropout[name] = CheapDropout(dropout.p)
                swapped += 1
    return swapped
