"""The GGUF writer on a tiny random model of every family it supports: what llama.cpp reads (names,
types, hyperparameters, layouts) and a round trip through transformers' GGUF loader (same logits,
same greedy text); the variants it must refuse, each before any work with one clear message."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from tuneforge.deploy import gguf as gguf_writer
from tuneforge.errors import TuneforgeError
from tuneforge.testing import FAMILIES, build_tiny_model, build_tiny_tokenizer

QUANTS = ("f32", "f16", "q8_0")
ARCH = {
    "llama": "llama",
    "mistral": "llama",  # as llama.cpp's converter writes MistralForCausalLM
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma3": "gemma3",
    "gemma2": "gemma2",
    "phi3": "phi3",
}
# max |Δlogit| / max |logit| after the round trip (f32: the same floats, Gemma's 1 + w norms aside)
TOLERANCE = {"f32": 1e-6, "f16": 5e-3, "q8_0": 0.06}
PROMPT = "The quick brown fox jumps over the lazy dog 0123 and then some more words"


def _gemma_pattern(n: int, every: int) -> list[str]:
    return ["full_attention" if (i + 1) % every == 0 else "sliding_attention" for i in range(n)]


def _rebuild(path: Path, config) -> None:
    """Re-initialise the tiny model under `config`, norm scales randomised around 1 (Gemma keeps
    w in (1 + w) and llama.cpp stores 1 + w: a layout change the test must see)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    center = 0.0 if config.model_type.startswith("gemma") else 1.0
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.normal_(center, 0.1)
    model.save_pretrained(path)


def build_family(path: Path, family: str) -> Path:
    """The tiny model of `family`, adjusted to what a GGUF file can carry.

    Qwen3: head_dim 128 (transformers' loader reads none back); Gemma: head_dim = query scale = 256
    (llama.cpp scales by head_dim, transformers' loader assumes 256), the stock layer pattern and a
    sliding window of 8 tokens, shorter than the prompt.
    """
    from transformers import AutoConfig, Gemma2Config

    build_tiny_model(
        path, "gemma3" if family == "gemma2" else family, layers=6 if family == "gemma3" else 2
    )
    config = AutoConfig.from_pretrained(path)
    if family == "qwen3":
        config.head_dim = 128
    elif family == "gemma3":
        config.head_dim = config.query_pre_attn_scalar = 256
        config.sliding_window = 8
        config.layer_types = _gemma_pattern(6, 6)
    elif family == "gemma2":
        keep = ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads")
        config = Gemma2Config(
            **{k: getattr(config, k) for k in keep},
            num_hidden_layers=2,
            num_key_value_heads=2,
            head_dim=256,
            query_pre_attn_scalar=256,
            sliding_window=8,
            max_position_embeddings=1024,
            bos_token_id=config.bos_token_id,
            eos_token_id=config.eos_token_id,
            pad_token_id=config.pad_token_id,
        )
    _rebuild(path, config)
    return path


FAMILIES_TESTED = (*FAMILIES, "gemma2")


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """{family: (model, tokenizer, folder)}: each family written once per type, as <quant>.gguf."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = {}
    for family in FAMILIES_TESTED:
        folder = build_family(tmp_path_factory.mktemp(f"gguf-{family}"), family)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        for quant in QUANTS:
            gguf_writer.write_gguf(
                model, tokenizer, folder / f"{quant}.gguf", quant=quant, name=f"tiny-{family}"
            )
        out[family] = (model, tokenizer, folder)
    return out


def _fields(path: Path) -> tuple[dict, dict]:
    reader = gguf.GGUFReader(path)
    fields = {
        k: f.contents()
        for k, f in reader.fields.items()
        if k not in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges")
    }
    return fields, {t.name: t for t in reader.tensors}


# --------------------------------------------------------------------------------------------------
# What llama.cpp reads


def test_every_tested_family_is_supported():
    for family in ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "gemma2", "phi3"):
        assert gguf_writer.supports(family) and family in gguf_writer.SUPPORTED_ARCHITECTURES
    for family in ("gemma3", "falcon", "gpt2", "qwen2_moe", "mixtral"):
        assert not gguf_writer.supports(family)


@pytest.mark.parametrize("family", FAMILIES_TESTED)
def test_hyperparameters_llama_cpp_reads(written, family):
    model, _, folder = written[family]
    config = model.config
    fields, _ = _fields(folder / "q8_0.gguf")
    arch = ARCH[family]
    assert fields["general.architecture"] == arch and fields["general.name"] == f"tiny-{family}"
    assert fields["general.file_type"] == 7 and fields["general.quantization_version"] == 2
    assert fields[f"{arch}.block_count"] == config.num_hidden_layers
    assert fields[f"{arch}.embedding_length"] == config.hidden_size
    assert fields[f"{arch}.feed_forward_length"] == config.intermediate_size
    assert fields[f"{arch}.attention.head_count"] == config.num_attention_heads
    assert fields[f"{arch}.attention.head_count_kv"] == config.num_key_value_heads
    assert fields[f"{arch}.attention.layer_norm_rms_epsilon"] == pytest.approx(config.rms_norm_eps)
    assert fields[f"{arch}.vocab_size"] == config.vocab_size
    expected_context = 512 if family == "mistral" else config.max_position_embeddings
    assert fields[f"{arch}.context_length"] == expected_context  # Mistral: capped at its window
    theta = 1e6 if family == "gemma3" else 1e4
    assert fields[f"{arch}.rope.freq_base"] == pytest.approx(theta)
    if family in ("llama", "mistral", "phi3"):
        assert fields[f"{arch}.rope.dimension_count"] == 8
    if family in ("qwen3", "gemma3", "gemma2"):
        assert fields[f"{arch}.attention.key_length"] == config.head_dim
        assert fields[f"{arch}.attention.value_length"] == config.head_dim
    if family in ("gemma3", "gemma2"):
        assert fields[f"{arch}.attention.sliding_window"] == 8
    if family == "gemma3":
        assert fields["gemma3.rope.freq_base_swa"] == pytest.approx(1e4)
    if family == "gemma2":
        assert fields["gemma2.attn_logit_softcapping"] == pytest.approx(50.0)
        assert fields["gemma2.final_logit_softcapping"] == pytest.approx(30.0)
    if family == "phi3":
        assert fields["phi3.attention.sliding_window"] == 0  # no window (llama.cpp's Phi-4 marker)
        assert fields["phi3.rope.scaling.original_context_length"] == 4096
    assert fields["tokenizer.ggml.model"] == "gpt2"


LAYER_TENSORS = {
    "llama": ("attn_q", "attn_k", "attn_v", "ffn_gate", "ffn_up", "ffn_norm"),
    "qwen2": ("attn_q.bias", "attn_k.bias", "attn_v.bias", "ffn_gate", "ffn_norm"),
    "qwen3": ("attn_q_norm", "attn_k_norm", "attn_q", "ffn_gate", "ffn_norm"),
    "gemma3": ("attn_q_norm", "attn_k_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm"),
    "gemma2": ("post_attention_norm", "ffn_norm", "post_ffw_norm"),
    "phi3": ("attn_qkv", "ffn_up", "ffn_norm"),
}
LAYER_TENSORS["mistral"] = LAYER_TENSORS["llama"]


@pytest.mark.parametrize("family", FAMILIES_TESTED)
@pytest.mark.parametrize("quant", QUANTS)
def test_tensor_names_and_types(written, family, quant):
    model, _, folder = written[family]
    _, tensors = _fields(folder / f"{quant}.gguf")
    for layer in range(model.config.num_hidden_layers):
        for leaf in (*LAYER_TENSORS[family], "attn_norm", "attn_output", "ffn_down"):
            name = leaf if leaf.endswith(".bias") else f"{leaf}.weight"
            assert f"blk.{layer}.{name}" in tensors, name
    assert "token_embd.weight" in tensors and "output_norm.weight" in tensors
    assert ("output.weight" in tensors) == (not model.config.tie_word_embeddings)
    if family == "phi3":  # fused as llama.cpp reads them: no separate q/k/v or gate
        assert not any(".attn_q." in n or ".ffn_gate." in n for n in tensors)
    assert len(tensors) == len(gguf_writer.gguf_tensors(model))
    matrix_type = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0"}[quant]
    for name, tensor in tensors.items():
        want = "F32" if len(tensor.shape) == 1 else matrix_type
        assert tensor.tensor_type.name == want, name


def _hf_weight(model, name: str) -> np.ndarray:
    return model.state_dict()[name].float().numpy()


def test_layouts_llama_cpp_expects(written):
    """Q/K permuted for the LLAMA graph only; Gemma norms stored as 1 + w; Phi-3 fused as it is."""
    for family, permuted in (
        ("llama", True),
        ("qwen2", False),
        ("qwen3", False),
        ("gemma3", False),
    ):
        model, _, folder = written[family]
        _, tensors = _fields(folder / "f32.gguf")
        q = _hf_weight(model, "model.layers.0.self_attn.q_proj.weight")
        stored = np.asarray(tensors["blk.0.attn_q.weight"].data)
        assert np.array_equal(stored, q) != permuted, family
        if permuted:
            assert np.array_equal(stored, gguf_writer.permute_rotary(q, 4))
    for family in ("gemma3", "gemma2"):
        model, _, folder = written[family]
        _, tensors = _fields(folder / "f32.gguf")
        for hf, name in (
            ("model.norm.weight", "output_norm.weight"),
            ("model.layers.0.post_attention_layernorm.weight", "blk.0.post_attention_norm.weight"),
        ):
            stored = np.asarray(tensors[name].data)
            np.testing.assert_allclose(stored, _hf_weight(model, hf) + 1.0, rtol=0, atol=1e-7)
    model, _, folder = written["phi3"]
    _, tensors = _fields(folder / "f32.gguf")
    for hf, name in (
        ("model.layers.1.self_attn.qkv_proj.weight", "blk.1.attn_qkv.weight"),
        ("model.layers.1.mlp.gate_up_proj.weight", "blk.1.ffn_up.weight"),
    ):
        assert np.array_equal(np.asarray(tensors[name].data), _hf_weight(model, hf))


# --------------------------------------------------------------------------------------------------
# What transformers' GGUF loader reads back


@pytest.mark.parametrize("family", FAMILIES_TESTED)
@pytest.mark.parametrize("quant", QUANTS)
def test_round_trip_through_the_transformers_gguf_loader(written, family, quant):
    from transformers import AutoModelForCausalLM

    model, tokenizer, folder = written[family]
    loaded = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=f"{quant}.gguf", dtype=torch.float32
    ).eval()
    assert type(loaded).__name__ in (type(model).__name__, "LlamaForCausalLM")  # Mistral: a Llama
    ids = torch.tensor([tokenizer(PROMPT)["input_ids"]])
    assert ids.shape[1] > 8  # longer than the Gemma sliding window
    with torch.no_grad():
        want, got = model(input_ids=ids).logits, loaded(input_ids=ids).logits
        greedy = {
            k: m.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)[0, ids.shape[1] :]
            for k, m in (("want", model), ("got", loaded))
        }
    relative = float((got - want).abs().max() / want.abs().max())
    assert relative <= TOLERANCE[quant], relative
    if quant != "q8_0":
        assert greedy["got"].tolist() == greedy["want"].tolist()


@pytest.mark.parametrize("family", FAMILIES_TESTED)
def test_the_tokenizer_transformers_rebuilds_splits_alike(written, family):
    from transformers import AutoTokenizer

    _, tokenizer, folder = written[family]
    loaded = AutoTokenizer.from_pretrained(folder, gguf_file="f16.gguf")
    for text in (PROMPT, "  two  spaces\n\nand new lines 3.14", "<|im_start|>user\nhi<|im_end|>"):
        assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"], text


# --------------------------------------------------------------------------------------------------
# Refused up front


CONFIG_CLASSES = {
    "llama": "LlamaConfig",
    "mistral": "MistralConfig",
    "qwen2": "Qwen2Config",
    "qwen3": "Qwen3Config",
    "gemma3": "Gemma3TextConfig",
    "phi3": "Phi3Config",
}


def _config(family: str, **changes):
    import transformers

    config = getattr(transformers, CONFIG_CLASSES[family])(
        hidden_size=32, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2
    )
    for key, value in changes.items():
        setattr(config, key, value)
    return config


@pytest.mark.parametrize(
    ("family", "changes", "message"),
    [
        ("qwen3", {"head_dim": 8}, "head_dim=8 (transformers' GGUF loader assumes 128)"),
        ("qwen2", {"use_sliding_window": True}, "use_sliding_window=True"),
        ("gemma3", {"head_dim": 8}, "query_pre_attn_scalar=256 (llama.cpp assumes 8)"),
        ("gemma3", {"layer_types": ["sliding_attention", "full_attention"]}, "layer_types="),
        ("gemma3", {"final_logit_softcapping": 30.0}, "final_logit_softcapping=30.0"),
        (
            "gemma3",
            {
                "rope_parameters": {
                    "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                    "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
                }
            },
            "RoPE scaling 'linear' on full_attention layers",
        ),
        (
            "gemma3",
            {
                "rope_parameters": {
                    "full_attention": {"rope_type": "default", "rope_theta": 1e6},
                    "sliding_attention": {"rope_type": "default", "rope_theta": 5e4},
                }
            },
            "local RoPE base 50000",
        ),
        (
            "phi3",
            {
                "rope_parameters": {
                    "rope_type": "default",
                    "rope_theta": 1e4,
                    "partial_rotary_factor": 0.75,
                }
            },
            "partial rotary factor 0.75",
        ),
        ("phi3", {"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4}}, "'longrope'"),
        ("mistral", {"hidden_act": "gelu"}, "activation 'gelu'"),
    ],
)
def test_variants_it_cannot_express_are_refused(family, changes, message):
    config = _config(family, **changes)
    assert gguf_writer.problems(config)
    with pytest.raises(TuneforgeError, match="variant is not supported yet") as e:
        gguf_writer.check_supported(config)
    assert message in str(e.value) and "merged" in e.value.hint


def test_a_sentencepiece_tokenizer_without_a_source_gguf_is_refused_up_front():
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(
        models.BPE({"<unk>": 0, "▁": 1, "a": 2}, [], unk_token="<unk>", byte_fallback=True)
    )
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback()])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    with pytest.raises(TuneforgeError, match="SentencePiece-style BPE tokenizer") as e:
        gguf_writer.check_exportable(_config("llama"), fast, None)
    assert "--format merged" in e.value.hint


def test_known_split_pre_tokenizers_get_their_llama_cpp_names(written):
    _, tokenizer, _ = written["qwen2"]  # transformers' Qwen2Tokenizer: the Qwen2 split regex
    assert gguf_writer.vocab_plan(tokenizer).pre == "qwen2"
    fields, _ = _fields(written["qwen2"][2] / "f32.gguf")
    assert fields["tokenizer.ggml.pre"] == "qwen2"


# --------------------------------------------------------------------------------------------------
# A base model from a GGUF file whose tokenizer is not byte-level BPE: its metadata is copied


def _source_gguf(path: Path, tokens: list[str]) -> Path:
    """A vocabulary-only GGUF with llama.cpp's SentencePiece ("llama") tokenizer metadata."""
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores([-float(i) for i in range(len(tokens))])
    writer.add_token_types([gguf.TokenType.NORMAL] * len(tokens))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_add_space_prefix(False)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return path


def test_the_source_gguf_tokenizer_is_copied(written, tmp_path):
    model, tokenizer, _ = written["gemma3"]
    tokens = tokenizer.convert_ids_to_tokens(list(range(model.config.vocab_size)))
    source = _source_gguf(tmp_path / "base.gguf", tokens)
    assert gguf_writer.vocab_plan(tokenizer, source).route == "copy"
    summary = gguf_writer.write_gguf(
        model, tokenizer, tmp_path / "m.gguf", quant="f16", name="x", source=source
    )
    assert summary.tokenizer == "copy" and summary.architecture == "gemma3"
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    base = gguf.GGUFReader(source)
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.scores"):
        assert reader.fields[key].contents() == base.fields[key].contents(), key
        assert reader.fields[key].types == base.fields[key].types, key
    assert reader.fields["tokenizer.ggml.add_bos_token"].contents() is True
    assert (
        reader.fields["tokenizer.chat_template"].contents() == tokenizer.chat_template
    )  # the run's


def test_a_source_gguf_whose_tokens_differ_is_refused(written, tmp_path):
    model, tokenizer, _ = written["gemma3"]
    tokens = tokenizer.convert_ids_to_tokens(list(range(model.config.vocab_size)))
    tokens[5] = "something else"
    source = _source_gguf(tmp_path / "base.gguf", tokens)
    with pytest.raises(TuneforgeError, match="differs from its source GGUF"):
        gguf_writer.write_gguf(
            model, tokenizer, tmp_path / "m.gguf", quant="f16", name="x", source=source
        )
    short = _source_gguf(tmp_path / "short.gguf", tokens[:-1])
    with pytest.raises(TuneforgeError, match="lists 399 tokens"):
        gguf_writer.write_gguf(
            model, tokenizer, tmp_path / "m.gguf", quant="f16", name="x", source=short
        )


def test_source_gguf_is_found_through_the_cache_manifest(tmp_path):
    source = _source_gguf(tmp_path / "base.gguf", ["a", "b"])
    cached = tmp_path / "cached"
    cached.mkdir()
    assert gguf_writer.source_gguf(cached) is None
    (cached / "tuneforge_source.json").write_text(f'{{"gguf": "{source}"}}')
    assert gguf_writer.source_gguf(cached) == source
    assert gguf_writer.source_gguf_fields(cached)["tokenizer_model"] == "llama"
    source.unlink()
    assert gguf_writer.source_gguf(cached) is None


def test_tiny_tokenizer_is_byte_level():
    assert gguf_writer.vocab_plan(build_tiny_tokenizer()).route == "gpt2"
