"""FusedLoraLinear: PEFT's LoRA linear with the adapter branch fused into the frozen matmuls.
Same outputs, same dropout masks and the same gradients as PEFT's own forward."""

from __future__ import annotations

import copy

import pytest
import torch

from tuneforge.config import LoraConfig
from tuneforge.methods.fused_lora import FusedLoraLinear, use_fused_lora
from tuneforge.methods.lora import apply_lora
from tuneforge.models import load_causal_lm


def _twins(tiny_model, dropout: float):
    """The same LoRA model twice: with the fused layers, and with PEFT's own."""
    from peft.tuners.lora import Linear

    torch.manual_seed(0)
    fused = apply_lora(load_causal_lm(tiny_model), LoraConfig(r=4, dropout=dropout), "CAUSAL_LM")
    for name, p in fused.named_parameters():  # B starts at zero: give the adapters a value
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    peft = copy.deepcopy(fused)
    for m in peft.modules():
        if isinstance(m, FusedLoraLinear):
            m.__class__ = Linear
    return fused, peft


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 200, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 8:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def _loss_and_grads(model, batch, seed: int):
    torch.manual_seed(seed)  # the dropout masks come from torch's generator
    loss = model(**batch).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    return loss.detach(), grads


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_same_loss_and_gradients_as_peft(tiny_model, dropout):
    fused, peft = _twins(tiny_model, dropout)
    assert sum(isinstance(m, FusedLoraLinear) for m in fused.modules()) > 0
    fused.train(), peft.train()
    batch = _batch()
    loss_f, grads_f = _loss_and_grads(fused, batch, seed=3)
    loss_p, grads_p = _loss_and_grads(peft, batch, seed=3)
    torch.testing.assert_close(loss_f, loss_p, rtol=1e-5, atol=1e-6)
    assert grads_f.keys() == grads_p.keys() and any("lora_A" in n for n in grads_f)
    for name in grads_f:
        torch.testing.assert_close(grads_f[name], grads_p[name], rtol=1e-4, atol=1e-6, msg=name)
    if dropout:  # another seed, other masks: the check above compared masks, not luck
        loss_other, _ = _loss_and_grads(peft, batch, seed=4)
        assert not torch.isclose(loss_other, loss_p, rtol=1e-6)


def test_same_outputs_when_evaluating_and_with_the_adapters_off(tiny_model):
    fused, peft = _twins(tiny_model, 0.2)
    fused.eval(), peft.eval()
    batch = _batch()
    with torch.no_grad():
        torch.testing.assert_close(fused(**batch).logits, peft(**batch).logits)
        with fused.disable_adapter(), peft.disable_adapter():
            base_f, base_p = fused(**batch).logits, peft(**batch).logits
        torch.testing.assert_close(base_f, base_p)
        assert not torch.allclose(base_f, fused(**batch).logits)  # the adapters do something


def test_merged_adapters_take_peft_path_and_agree(tiny_model):
    fused, _ = _twins(tiny_model, 0.0)
    fused.eval()
    batch = _batch()
    with torch.no_grad():
        before = fused(**batch).logits
        fused.merge_adapter()
        torch.testing.assert_close(fused(**batch).logits, before, rtol=1e-4, atol=1e-5)
        fused.unmerge_adapter()
        merged = copy.deepcopy(fused).merge_and_unload()  # a plain model again, for export
        assert not any(isinstance(m, FusedLoraLinear) for m in merged.modules())
        torch.testing.assert_close(merged(**batch).logits, before, rtol=1e-4, atol=1e-5)


def test_swap_keeps_weights_and_is_idempotent(tiny_model, tmp_path):
    fused, peft = _twins(tiny_model, 0.1)
    assert list(fused.state_dict()) == list(peft.state_dict())
    assert use_fused_lora(fused) == 0  # already fused
    n = sum(isinstance(m, FusedLoraLinear) for m in fused.modules())
    assert use_fused_lora(peft) == n
    fused.save_pretrained(tmp_path / "a")
    assert (tmp_path / "a" / "adapter_model.safetensors").exists()


def test_dora_falls_back_to_peft(tiny_model):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(
        load_causal_lm(tiny_model), PeftLoraConfig(r=4, use_dora=True, target_modules="all-linear")
    )
    reference = copy.deepcopy(model)
    assert use_fused_lora(model) > 0
    batch = _batch()
    model.train(), reference.train()
    loss_f, grads_f = _loss_and_grads(model, batch, seed=3)
    loss_p, grads_p = _loss_and_grads(reference, batch, seed=3)
    assert torch.equal(loss_f, loss_p)  # the very same computation
    assert all(torch.equal(grads_f[n], grads_p[n]) for n in grads_f)
