"""bf16 on a CPU with native bf16: the capability decision (mocked capabilities), which tensors
are stored in bf16, fp32 vs bf16 loss agreement, the fused LoRA path in bf16, inference in bf16,
and the refusal on a CPU without native bf16."""

from __future__ import annotations

import pytest
import torch

from tuneforge import cpu_bf16, devices, precision
from tuneforge.config import LoraConfig, validate_recipe
from tuneforge.cpu_bf16 import CpuBf16
from tuneforge.errors import TuneforgeError
from tuneforge.methods.fused_lora import FusedLoraLinear
from tuneforge.methods.lora import apply_lora
from tuneforge.models import load_causal_lm, load_sequence_classifier

NATIVE = CpuBf16("Test CPU", "AVX512-BF16", 2.4)
NATIVE_BUT_SLOW = CpuBf16("Test CPU", "AVX512-BF16", 1.05)
EMULATED = CpuBf16("Old CPU", None, None)
CPU = torch.device("cpu")


def recipe(**fields):
    return validate_recipe(
        {"name": "t", "task": "classification", "data": {"train": "x.csv"}, **fields}
    )


@pytest.fixture
def cpu_has(monkeypatch):
    """Pretend this CPU is `which` (a CpuBf16)."""

    def use(which: CpuBf16) -> None:
        monkeypatch.setattr(cpu_bf16, "detect", lambda: which)

    return use


# --------------------------------------------------------------------------------------------------
# The decision


def test_the_native_instruction_set_is_read_from_torchs_capability_report():
    assert cpu_bf16.native_isa({"amx_bf16": True, "avx512_bf16": True}) == "AMX-BF16"
    assert cpu_bf16.native_isa({"amx_bf16": False, "avx512_bf16": True}) == "AVX512-BF16"
    assert cpu_bf16.native_isa({"avx512_f": True, "avx2": True}) is None
    assert cpu_bf16.native_isa({}) is None  # a torch that reports nothing: not native


def test_detect_measures_once_and_hands_the_figure_to_launched_processes(monkeypatch):
    monkeypatch.setattr(cpu_bf16, "capability", lambda: {"cpu_name": "X", "avx512_bf16": True})
    monkeypatch.delenv(cpu_bf16.ENV, raising=False)
    calls = []
    monkeypatch.setattr(cpu_bf16, "measure", lambda: calls.append(1) or 2.2)
    cpu_bf16.detect.cache_clear()
    try:
        found = cpu_bf16.detect()
        assert (found.isa, found.speedup, found.usable) == ("AVX512-BF16", 2.2, True)
        assert calls == [1]
        assert float(__import__("os").environ[cpu_bf16.ENV]) == pytest.approx(2.2)
        cpu_bf16.detect.cache_clear()  # a launched process: the figure comes from its parent
        assert cpu_bf16.detect().speedup == pytest.approx(2.2) and calls == [1]
        monkeypatch.setenv(cpu_bf16.ENV, "1.1")  # measured, but not faster enough
        cpu_bf16.detect.cache_clear()
        assert not cpu_bf16.detect().usable
        monkeypatch.setattr(cpu_bf16, "capability", lambda: {"cpu_name": "Y", "avx2": True})
        cpu_bf16.detect.cache_clear()
        old = cpu_bf16.detect()
        assert (old.native, old.usable, old.speedup) == (False, False, None)
        assert "no native bf16" in old.describe()
    finally:
        cpu_bf16.detect.cache_clear()


def test_the_measurement_compares_real_matmuls():
    ratio = cpu_bf16.measure(size=64, repeats=2)
    assert ratio > 0 and ratio == ratio  # a positive, finite ratio of two timings


def test_auto_picks_bf16_only_where_native_faster_and_a_frozen_base(cpu_has):
    cpu_has(NATIVE)
    assert devices.precision("auto", CPU, "lora") == "bf16"
    assert devices.precision("auto", CPU, "freeze") == "bf16"
    assert devices.precision("auto", CPU, "full") == "fp32"  # full fine-tuning: fp32 unless asked
    assert devices.precision("fp32", CPU, "lora") == "fp32"
    assert devices.precision("bf16", CPU, "full") == "bf16"  # asked
    cpu_has(NATIVE_BUT_SLOW)
    assert devices.precision("auto", CPU, "lora") == "fp32"
    cpu_has(EMULATED)
    assert devices.precision("auto", CPU, "lora") == "fp32"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU refusals")
def test_bf16_refused_on_a_cpu_without_native_bf16_accepted_with_it(cpu_has):
    cpu_has(EMULATED)
    with pytest.raises(TuneforgeError, match="Old CPU.*has none") as e:
        devices.require_hardware_for(recipe(training={"precision": "bf16"}))
    assert "36x slower" in e.value.hint
    devices.require_hardware_for(recipe(training={"precision": "auto"}))  # auto: fp32 there
    cpu_has(NATIVE)
    devices.require_hardware_for(recipe(training={"precision": "bf16"}))
    with pytest.raises(TuneforgeError, match="fp16 needs a CUDA GPU"):
        devices.require_hardware_for(recipe(training={"precision": "fp16"}))


def test_inference_follows_training_only_on_a_usable_cpu(cpu_has):
    cpu_has(NATIVE)
    assert devices.inference_precision("bf16", CPU) == "bf16"
    assert devices.inference_precision("fp32", CPU) == "fp32"  # an fp32 run stays fp32
    assert devices.inference_precision("bf16", torch.device("meta")) == "fp32"  # not a CPU
    cpu_has(NATIVE_BUT_SLOW)
    assert devices.inference_precision("bf16", CPU) == "fp32"
    cpu_has(EMULATED)  # a bf16 run used on a CPU without it: fp32 there
    assert devices.inference_precision("bf16", CPU) == "fp32"


# --------------------------------------------------------------------------------------------------
# Where the tensors are


def _lora_classifier(tiny_model, tiny_tokenizer):
    torch.manual_seed(0)
    model = load_sequence_classifier(tiny_model, ["neg", "pos"], tiny_tokenizer.pad_token_id)
    return apply_lora(model, LoraConfig(r=4, alpha=8, dropout=0.0), "SEQ_CLS", CPU)


def test_lora_stores_the_frozen_base_in_bf16_and_keeps_the_trainable_in_fp32(
    tiny_model, tiny_tokenizer, cpu_has
):
    cpu_has(NATIVE)
    model = _lora_classifier(tiny_model, tiny_tokenizer)
    assert precision.for_training(model, recipe(), CPU) == "bf16"
    frozen = {n: p.dtype for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
    assert frozen and set(frozen.values()) == {torch.bfloat16}
    assert any("lora_A" in n for n in trainable) and any("score" in n for n in trainable)
    assert set(trainable.values()) == {torch.float32}  # adapters, head: fp32 master weights
    assert {b.dtype for n, b in model.named_buffers() if "inv_freq" in n} == {torch.float32}
    assert model.config._attn_implementation == "eager"  # short sequences: eager is faster
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    ids = torch.randint(5, 200, (2, 9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=ids, labels=torch.tensor([0, 1])).loss.backward()
    optimizer.step()
    states = [s for state in optimizer.state.values() for s in state.values() if s.dim()]
    assert states and {s.dtype for s in states} == {torch.float32}  # the optimizer state


def test_freeze_keeps_its_top_layers_fp32_full_stays_fp32(tiny_model, tiny_tokenizer, cpu_has):
    from tuneforge.config import FreezeConfig
    from tuneforge.methods import apply_method

    cpu_has(NATIVE)
    model = load_sequence_classifier(tiny_model, ["neg", "pos"], tiny_tokenizer.pad_token_id)
    model = apply_method(model, "freeze", LoraConfig(), FreezeConfig(trainable_layers=1), "SEQ_CLS")
    precision.for_training(model, recipe(method="freeze"), CPU)
    layers = model.model.layers
    assert {p.dtype for p in layers[0].parameters()} == {torch.bfloat16}
    assert {p.dtype for p in layers[-1].parameters()} == {torch.float32}
    full = load_sequence_classifier(tiny_model, ["neg", "pos"], tiny_tokenizer.pad_token_id)
    assert precision.for_training(full, recipe(method="full"), CPU) == "fp32"
    assert {p.dtype for p in full.parameters()} == {torch.float32}


def test_long_sequences_keep_sdpa(tiny_model, tiny_tokenizer, cpu_has):
    cpu_has(NATIVE)
    model = _lora_classifier(tiny_model, tiny_tokenizer)
    before = model.config._attn_implementation
    precision.for_training(model, recipe(training={"max_length": 1024}), CPU)
    assert model.config._attn_implementation == before != "eager"


def test_an_emulating_cpu_changes_nothing(tiny_model, tiny_tokenizer, cpu_has):
    cpu_has(EMULATED)
    model = _lora_classifier(tiny_model, tiny_tokenizer)
    before = model.config._attn_implementation
    assert precision.for_training(model, recipe(), CPU) == "fp32"
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert model.config._attn_implementation == before


# --------------------------------------------------------------------------------------------------
# The numbers


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 200, (4, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[3, 9:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def test_bf16_loss_and_gradients_agree_with_fp32(tiny_model, cpu_has):
    cpu_has(NATIVE)
    losses, grads = {}, {}
    for mode in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = apply_lora(load_causal_lm(tiny_model), LoraConfig(r=4, dropout=0.0), "CAUSAL_LM")
        for name, p in model.named_parameters():  # B starts at zero: give the adapters a value
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(2))
        if mode == "bf16":
            precision.store_frozen_in(model)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
            loss = model(**_batch()).loss
        loss.backward()
        losses[mode] = loss.item()
        grads[mode] = torch.cat(
            [p.grad.flatten().float() for n, p in model.named_parameters() if p.requires_grad]
        )
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.01)
    cosine = torch.nn.functional.cosine_similarity(grads["fp32"], grads["bf16"], dim=0)
    assert cosine > 0.99, cosine


def test_the_fused_lora_path_runs_in_bf16_with_fp32_adapters(tiny_model):
    from peft.tuners.lora import Linear

    torch.manual_seed(0)
    fused = apply_lora(load_causal_lm(tiny_model), LoraConfig(r=4, dropout=0.0), "CAUSAL_LM", CPU)
    for name, p in fused.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    precision.store_frozen_in(fused)
    plain = __import__("copy").deepcopy(fused)
    for m in plain.modules():
        if isinstance(m, FusedLoraLinear):
            m.__class__ = Linear  # PEFT's own forward
    taken = []
    layer = next(m for m in fused.modules() if isinstance(m, FusedLoraLinear))
    original = layer._fusable
    layer._fusable = lambda *a: taken.append(original(*a)) or taken[-1]
    results = []
    for model in (fused, plain):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**_batch()).loss
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        results.append((loss.detach(), grads))
    assert taken and taken[0] is not None  # the fused path, not PEFT's fallback
    torch.testing.assert_close(results[0][0], results[1][0], rtol=2e-2, atol=2e-2)
    for name, grad in results[0][1].items():
        assert grad.dtype == torch.float32  # the master weights' gradients
        other = results[1][1][name]
        assert torch.nn.functional.cosine_similarity(grad.flatten(), other.flatten(), 0) > 0.99


def test_inference_in_bf16_returns_fp32_outputs_close_to_fp32(tiny_model, tiny_tokenizer):
    ids = torch.randint(5, 200, (2, 10), generator=torch.Generator().manual_seed(3))
    reference = load_causal_lm(tiny_model).eval()
    model = precision.ready_for_inference(load_causal_lm(tiny_model).eval(), CPU, "bf16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        want, got = reference(input_ids=ids).logits, model(input_ids=ids).logits
    assert got.dtype == torch.float32  # softmax, metrics and numpy see fp32
    assert (got - want).abs().max() < 0.05 * want.abs().max()
    out = model.generate(ids[:1], max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 14)  # generate goes through the same bf16 forward
    assert precision.precision_of(model) == torch.bfloat16
    same = precision.ready_for_inference(load_causal_lm(tiny_model).eval(), CPU, "fp32")
    assert {p.dtype for p in same.parameters()} == {torch.float32}
    assert precision.precision_of(same) == torch.float32
