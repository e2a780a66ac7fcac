"""Planner arithmetic on the tiny Llama, against figures written out by hand, and the activation
formula against what autograd really saves (measured with saved_tensors_hooks)."""

from __future__ import annotations

import pytest
import torch

from tuneforge.config import FreezeConfig, LoraConfig, validate_recipe
from tuneforge.errors import TuneforgeError
from tuneforge.methods import apply_method
from tuneforge.planning import (
    DecoderShape,
    MethodSpec,
    Workload,
    activation_values,
    count_on_meta,
    estimate_memory,
    layer_values,
    saved_activation_bytes,
)

# the tiny Llama of tuneforge.testing: hidden 32, intermediate 64, 2 layers, 4 heads of 8, 2 kv heads
TINY = DecoderShape(
    hidden=32, intermediate=64, layers=2, heads=4, kv_heads=2, head_dim=8, vocab=400
)


def recipe(**fields):
    return validate_recipe(
        {"name": "t", "task": "classification", "data": {"train": "x.csv"}, **fields}
    )


def test_layer_values_by_hand():
    # full: two norms 2*(3*32+1)=194, attention 4*4*8+4=132, MLP 4*64=256
    assert layer_values(TINY, MethodSpec("full")) == 582
    # LoRA r=4 on 7 linears: norms 2*(2*32+1)=130, 132, 256, adapters 7*4=28
    lora = MethodSpec("lora", lora_r=4)
    assert layer_values(TINY, lora) == 546
    assert layer_values(TINY, lora, first=True) == 546 - 33  # frozen embeddings: no norm input
    # adapter dropout: 1-byte masks (0.25 values) for 6 hidden-wide and 1 intermediate input,
    # and 4h of the adapters' input copies; the first block has no q/k/v masks
    dropped = MethodSpec("lora", lora_r=4, lora_dropout=0.1)
    assert layer_values(TINY, dropped) == 546 + 0.25 * (6 * 32 + 64) + 4 * 32
    assert layer_values(TINY, dropped, first=True) == 546 - 33 + 0.25 * (3 * 32 + 64) + 4 * 32


def test_activation_values_by_hand():
    work = Workload(batch_size=2, seq_len=10, logit_positions=10, logit_width=400)
    tokens = 20
    # full, causal LM (tied head trains): blocks 2*582, final norm 3*32+1, ids+labels 4
    per_token = 2 * 582 + 97 + 4
    logits = 3 * 2 * 10 * 400  # log-softmax, logits, their gradient
    mask, rope = 2 * 2 * 10 * 10, 2 * 8 * 10
    full = MethodSpec("full")
    assert activation_values(TINY, work, full) == tokens * per_token + logits + mask + rope
    saved_only = activation_values(TINY, work, full, transient=False)
    assert saved_only == tokens * per_token + 2 * 10 * 400 + mask + rope
    # gradient checkpointing: each block keeps its input (32), one block is recomputed
    ckpt = activation_values(TINY, work, full, checkpointing=True)
    assert ckpt == tokens * (2 * 32 + 582 + 97 + 4) + logits + mask + rope
    # freeze, top 1 block, frozen tied head: one block minus its frozen input, norm x+rsqrt+normed
    freeze = MethodSpec("freeze", trainable_layers=1, head_trainable=False)
    assert (
        activation_values(TINY, work, freeze) == tokens * (582 - 33 + 65 + 4) + logits + mask + rope
    )


def test_memory_parts_by_hand():
    work = Workload(batch_size=1, seq_len=8, logit_positions=8, logit_width=400, padded=False)
    m = estimate_memory(1000, 100, TINY, work, MethodSpec("lora", lora_r=4), runtime=7)
    assert (m.weights, m.gradients, m.optimizer) == (4000, 400, 800)  # fp32; AdamW 2 moments
    assert m.activations == 4 * activation_values(TINY, work, MethodSpec("lora", lora_r=4))
    assert m.total == 4000 + 400 + 800 + m.activations + 7
    q = estimate_memory(1000, 100, TINY, work, MethodSpec("lora"), quantized_base=True)
    assert q.weights == 4 * 100 + 900 // 2  # 4-bit frozen base: half a byte per weight
    half = estimate_memory(1000, 100, TINY, work, MethodSpec("lora", lora_r=4), precision="bf16")
    assert half.activations * 2 == pytest.approx(m.activations, abs=2)
    cpu = estimate_memory(
        1000, 100, TINY, work, MethodSpec("lora"), precision="bf16", bf16_base=True
    )
    assert cpu.weights == 4 * 100 + 2 * 900  # bf16 on a CPU: the frozen base at two bytes
    assert (cpu.gradients, cpu.optimizer) == (400, 800)  # trainable: fp32 master weights


@pytest.fixture(scope="module")
def tiny_config(tiny_model):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_model)
    config.num_labels = 2
    return config


def test_parameter_counts_by_hand(tiny_config):
    assert DecoderShape.from_config(tiny_config) == TINY
    # per block: q 32*32, k 32*16, v 32*16, o 32*32, gate/up/down 3*32*64, 2 norms 2*32
    block = 1024 + 512 + 512 + 1024 + 6144 + 64
    backbone = 400 * 32 + 2 * block + 32  # embeddings (tied with the LM head) + final norm
    # LoRA r=4: r*(in+out) per linear: q 256, k 192, v 192, o 256, gate 384, up 384, down 384
    lora_per_block = 256 + 192 + 192 + 256 + 3 * 384
    r = recipe(lora={"r": 4})
    trainable, total = count_on_meta(tiny_config, r, "SEQ_CLS")
    head = 32 * 2  # score layer, no bias; PEFT trains a copy of it (modules_to_save)
    assert trainable == 2 * lora_per_block + head
    assert total == backbone + head + 2 * lora_per_block + head
    assert count_on_meta(tiny_config, recipe(method="full"), "SEQ_CLS") == (backbone + head,) * 2
    # freeze the bottom block: top block + final norm + score train
    freeze = recipe(method="freeze", freeze={"trainable_layers": 1})
    assert count_on_meta(tiny_config, freeze, "SEQ_CLS") == (block + 32 + head, backbone + head)


@pytest.mark.parametrize(
    "method,dropout,task",
    [
        ("full", 0.0, "causal"),
        ("lora", 0.0, "causal"),
        ("lora", 0.1, "cls"),
        ("lora", 0.1, "causal"),
        ("freeze", 0.0, "cls"),
    ],
)
def test_formula_matches_what_autograd_saves(tiny_model, method, dropout, task):
    """The estimate (saved part) is within 5% of the bytes autograd really keeps, on the tiny model."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.manual_seed(0)
    if task == "causal":
        model = AutoModelForCausalLM.from_pretrained(tiny_model)
        width, peft_type = 400, "CAUSAL_LM"
    else:
        model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2)
        width, peft_type = 2, "SEQ_CLS"
    model = apply_method(
        model, method, LoraConfig(r=4, dropout=dropout), FreezeConfig(trainable_layers=1), peft_type
    )
    model.train()
    b, s = 4, 24
    ids = torch.randint(3, 400, (b, s))
    mask = torch.ones(b, s, dtype=torch.long)
    mask[0, 15:] = 0  # padding: transformers builds a float attention mask
    labels = ids if task == "causal" else torch.tensor([0, 1, 0, 1])
    measured, loss = saved_activation_bytes(
        model, {"input_ids": ids, "attention_mask": mask, "labels": labels}
    )
    assert torch.isfinite(loss)
    spec = MethodSpec(
        method,
        lora_r=4,
        lora_dropout=dropout,
        trainable_layers=1,
        head_trainable=task == "cls" or method == "full",
    )
    estimate = 4 * activation_values(TINY, Workload(b, s, s, width), spec, transient=False)
    assert estimate == pytest.approx(measured, rel=0.05)


def test_recipe_options():
    r = recipe(method="qlora", training={"grad_accum": 4, "gradient_checkpointing": True})
    assert (r.method, r.lora.quantize_base) == ("lora", "4bit")
    assert r.training.gradient_accumulation_steps == 4 and r.training.gradient_checkpointing
    assert r.training.precision == "auto"  # bf16 on a CUDA GPU that has it, else fp32
    with pytest.raises(TuneforgeError, match="training.precision"):
        recipe(training={"precision": "fp8"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU refusals")
def test_cuda_only_options_refused_on_cpu():
    from tuneforge.devices import require_hardware_for

    # bf16 on a CPU: refused without native bf16 only (tests/unit/test_cpu_bf16.py)
    with pytest.raises(TuneforgeError, match="fp16 needs a CUDA GPU"):
        require_hardware_for(recipe(training={"precision": "fp16"}))
    with pytest.raises(TuneforgeError, match=r"4bit \(QLoRA\) needs a CUDA GPU"):
        require_hardware_for(recipe(method="qlora"))
    with pytest.raises(TuneforgeError, match="not method: full"):
        require_hardware_for(recipe(method="full", lora={"quantize_base": "4bit"}))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_options_accepted():
    from tuneforge.devices import require_hardware_for
    from tuneforge.methods.qlora import quantization_config

    require_hardware_for(recipe(training={"precision": "bf16"}))
    r = recipe(method="qlora")
    try:
        require_hardware_for(r)
    except TuneforgeError as e:  # bitsandbytes not installed: the message says how
        assert "pip install bitsandbytes" in (e.hint or "")
        return
    cfg = quantization_config(r.lora)
    assert cfg.load_in_4bit and cfg.bnb_4bit_quant_type == "nf4"
