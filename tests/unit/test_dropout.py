"""CheapDropout: the LoRA dropout mask drawn with numpy, same distribution as nn.Dropout."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tuneforge.methods.lora_dropout import CheapDropout, use_cheap_dropout


def test_drops_at_the_rate_and_keeps_the_expectation():
    d = CheapDropout(0.05).train()
    x = torch.ones(1000, 1000)
    out = d(x)
    dropped = (out == 0).float().mean().item()
    rate = d.threshold / 65536  # 3277/65536 = 0.050003
    assert abs(rate - 0.05) < 1e-4
    sigma = math.sqrt(rate * (1 - rate) / x.numel())
    assert abs(dropped - rate) < 6 * sigma
    kept = out[out != 0]
    assert torch.allclose(kept, torch.full_like(kept, 65536 / (65536 - 3277)))
    assert abs(out.mean().item() - 1.0) < 6 * sigma * 1.06  # unbiased: E[out] = x


def test_gradient_is_the_mask_times_the_scale():
    d = CheapDropout(0.3).train()
    x = torch.randn(64, 48, requires_grad=True)
    out = d(x)
    out.sum().backward()
    keep = out.detach() != 0
    assert torch.equal(x.grad != 0, keep)
    assert torch.allclose(x.grad[keep], torch.full_like(x.grad[keep], d.scale))
    assert torch.allclose(out.detach()[keep], x.detach()[keep] * d.scale)


def test_seeded_by_torch_and_reproducible():
    d = CheapDropout(0.5).train()
    x = torch.ones(32, 32)
    torch.manual_seed(7)
    a = d(x)
    b = d(x)  # the torch generator moved on: a new mask
    torch.manual_seed(7)
    assert torch.equal(d(x), a)
    assert not torch.equal(a, b)
    state = torch.get_rng_state()  # what a Trainer checkpoint saves
    c = d(x)
    torch.set_rng_state(state)
    assert torch.equal(d(x), c)


@pytest.mark.parametrize("p", [0.0, 0.1])
def test_identity_when_evaluating_or_p_zero(p):
    x = torch.randn(8, 8)
    assert torch.equal(CheapDropout(p).eval()(x), x)
    if p == 0.0:
        assert torch.equal(CheapDropout(p).train()(x), x)


def test_swapped_into_every_lora_adapter_without_changing_weights(tiny_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    model = get_peft_model(base, LoraConfig(r=4, lora_dropout=0.1, target_modules="all-linear"))
    keys = list(model.state_dict())
    n_lora = sum(len(m.lora_dropout) for m in model.modules() if hasattr(m, "lora_dropout"))
    assert use_cheap_dropout(model) == n_lora > 0
    assert list(model.state_dict()) == keys
    dropouts = [
        d for m in model.modules() if hasattr(m, "lora_dropout") for d in m.lora_dropout.values()
    ]
    assert all(type(d) is CheapDropout and d.p == 0.1 for d in dropouts)
    assert use_cheap_dropout(model) == 0  # already swapped
    assert isinstance(dropouts[0], nn.Dropout)  # PEFT's isinstance checks still hold


def test_apply_lora_uses_it(tiny_model):
    from transformers import AutoModelForCausalLM

    from tuneforge.config import LoraConfig
    from tuneforge.methods.lora import apply_lora

    model = apply_lora(AutoModelForCausalLM.from_pretrained(tiny_model), LoraConfig(), "CAUSAL_LM")
    assert any(isinstance(m, CheapDropout) for m in model.modules())
