"""The GGUF writer on the tiny Llama: Q/K permutation, tensor types, tokenizer metadata, round trip
through transformers' GGUF loader, and clear errors for what it cannot write."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch

from tuneforge.deploy.gguf import (
    _encode,
    check_supported,
    gguf_tensors,
    permute_rotary,
    tokenizer_metadata,
    write_gguf,
)
from tuneforge.errors import TuneforgeError


@pytest.fixture(scope="module")
def tiny(tiny_model):
    from tuneforge.models import load_causal_lm, load_tokenizer

    return load_causal_lm(tiny_model).eval(), load_tokenizer(tiny_model)


@pytest.fixture(scope="module")
def written(tiny, tmp_path_factory):
    """The tiny model written once per type: {quant: folder}."""
    model, tokenizer = tiny
    folders = {}
    for quant in ("f32", "f16", "q8_0"):
        folder = tmp_path_factory.mktemp(f"gguf-{quant}")
        write_gguf(model, tokenizer, folder / "m.gguf", quant=quant, name="tiny", eot="<|im_end|>")
        folders[quant] = folder
    return folders


@pytest.mark.parametrize(("n_head", "n_kv"), [(4, 4), (4, 2), (8, 1)])
def test_rotary_permutation_is_what_the_transformers_loader_undoes(n_head, n_kv):
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    head_dim = 6
    undo = LlamaTensorProcessor(config={"num_attention_heads": n_head, "num_key_value_heads": n_kv})
    q = np.random.default_rng(0).normal(size=(n_head * head_dim, 5)).astype(np.float32)
    k = np.random.default_rng(1).normal(size=(n_kv * head_dim, 5)).astype(np.float32)
    q_gguf, k_gguf = permute_rotary(q, n_head, n_head), permute_rotary(k, n_head, n_kv)
    assert not np.array_equal(q_gguf, q)
    np.testing.assert_array_equal(undo.process(q_gguf, "blk.0.attn_q.weight").weights, q)
    np.testing.assert_array_equal(undo.process(k_gguf, "blk.0.attn_k.weight").weights, k)


def test_rotary_permutation_interleaves_the_two_halves_of_each_head():
    # one head of dim 4: HF rows (r0, r1 | r2, r3) pair r0 with r2; llama.cpp wants pairs adjacent
    rows = np.arange(4, dtype=np.float32)[:, None]
    assert permute_rotary(rows, 1)[:, 0].tolist() == [0, 2, 1, 3]


def test_tensor_names_and_tied_output(tiny):
    model, _ = tiny
    names = [name for name, _ in gguf_tensors(model)]
    assert names[0] == "token_embd.weight" and "output_norm.weight" in names
    assert "output.weight" not in names  # tied: readers reuse token_embd
    for layer in range(2):
        for leaf in (
            "attn_norm",
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_norm",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        ):
            assert f"blk.{layer}.{leaf}.weight" in names
    assert len(names) == 2 + 2 * 9


def test_tensor_types_follow_llama_cpp():
    matrix = np.ones((4, 64), np.float32)
    assert _encode(np.ones(64, np.float32), "q8_0")[0].dtype == np.float32  # norms stay F32
    assert _encode(matrix, "f32")[0].dtype == np.float32
    assert _encode(matrix, "f16")[0].dtype == np.float16
    data, raw = _encode(matrix, "q8_0")
    assert (
        raw == gguf.GGMLQuantizationType.Q8_0
        and data.dtype == np.uint8
        and data.shape == (4, 2 * 34)
    )
    data, raw = _encode(np.ones((4, 48), np.float32), "q8_0")  # 48 is not a multiple of 32
    assert raw is None and data.dtype == np.float16


def test_metadata_written(written, tiny):
    _, tokenizer = tiny
    reader = gguf.GGUFReader(written["q8_0"] / "m.gguf")
    fields = {
        k: f.contents()
        for k, f in reader.fields.items()
        if k not in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type")
    }
    assert fields["general.architecture"] == "llama"
    assert fields["general.name"] == "tiny"
    assert fields["general.file_type"] == 7  # MOSTLY_Q8_0
    assert fields["llama.block_count"] == 2 and fields["llama.embedding_length"] == 32
    assert (
        fields["llama.attention.head_count"] == 4 and fields["llama.attention.head_count_kv"] == 2
    )
    assert fields["llama.rope.dimension_count"] == 8
    # llama.cpp's names: model "gpt2", pre-tokenizer "gpt-2" (llama.cpp refuses to load a file
    # whose pre-tokenizer is "gpt2": found by running llama.cpp's llama-simple on an export)
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert fields["tokenizer.ggml.bos_token_id"] == tokenizer.bos_token_id
    assert fields["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id
    assert fields["tokenizer.ggml.padding_token_id"] == tokenizer.pad_token_id
    assert fields["tokenizer.ggml.unknown_token_id"] == tokenizer.unk_token_id
    assert "tokenizer.ggml.eot_token_id" not in fields  # <|im_end|> is already the EOS
    assert fields["tokenizer.ggml.add_bos_token"] is False
    assert fields["tokenizer.chat_template"] == tokenizer.chat_template
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    assert len(tokens) == len(tokenizer) and tokens[tokenizer.eos_token_id] == "<|im_end|>"
    assert types[tokenizer.eos_token_id] == gguf.TokenType.CONTROL
    assert types[tokenizer.convert_tokens_to_ids("Ġthe")] == gguf.TokenType.NORMAL
    merges = reader.fields["tokenizer.ggml.merges"].contents()
    assert merges[0].count(" ") == 1
    types_by_tensor = {t.name: t.tensor_type.name for t in reader.tensors}
    assert (
        types_by_tensor["token_embd.weight"] == "Q8_0"
        and types_by_tensor["output_norm.weight"] == "F32"
    )


@pytest.mark.parametrize(("quant", "tolerance"), [("f32", 0.0), ("f16", 5e-3), ("q8_0", 0.1)])
def test_round_trip_through_the_transformers_gguf_loader(written, tiny, quant, tolerance):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = tiny
    folder = written[quant]
    loaded = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file="m.gguf", dtype=torch.float32
    ).eval()
    for name, value in model.state_dict().items():
        if quant == "f32":
            assert torch.equal(loaded.state_dict()[name], value), (
                name
            )  # bit for bit, Q/K un-permuted
    ids = torch.tensor([tokenizer("The quick brown fox jumps over the lazy dog 0123")["input_ids"]])
    with torch.no_grad():
        want, got = model(input_ids=ids).logits, loaded(input_ids=ids).logits
    assert float((got - want).abs().max() / want.abs().max()) <= tolerance

    loaded_tok = AutoTokenizer.from_pretrained(folder, gguf_file="m.gguf")
    for text in [
        "Hello world",
        "  two  spaces\n\nand new lines 3.14",
        "<|im_start|>user\nhi<|im_end|>",
        "naïve café 🙂",
    ]:
        assert loaded_tok(text)["input_ids"] == tokenizer(text)["input_ids"], text
    assert loaded_tok.chat_template == tokenizer.chat_template


def test_sizes_shrink_with_the_type(written):
    sizes = {q: (f / "m.gguf").stat().st_size for q, f in written.items()}
    assert sizes["f32"] > sizes["f16"] > sizes["q8_0"]


def test_eot_token_is_written_when_it_differs_from_eos(tiny):
    _, tokenizer = tiny
    meta = tokenizer_metadata(tokenizer, len(tokenizer), eot="<|im_start|>")
    assert meta["special"]["eot"] == tokenizer.convert_tokens_to_ids("<|im_start|>")


def test_embedding_rows_beyond_the_tokenizer_become_unused_tokens(tiny):
    _, tokenizer = tiny
    meta = tokenizer_metadata(tokenizer, len(tokenizer) + 3)
    assert meta["tokens"][-3:] == [f"[PAD{len(tokenizer) + i}]" for i in range(3)]
    assert meta["types"][-3:] == [gguf.TokenType.UNUSED] * 3
    with pytest.raises(TuneforgeError, match="embeddings"):
        tokenizer_metadata(tokenizer, len(tokenizer) - 1)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model_type": "falcon"}, "'falcon' architecture is not supported yet"),
        ({"attention_bias": True}, "attention_bias=True"),
        ({"mlp_bias": True}, "mlp_bias=True"),
        ({"hidden_act": "gelu"}, "activation 'gelu'"),
        (
            {"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}},
            "RoPE scaling 'llama3'",
        ),
    ],
)
def test_unsupported_models_get_a_clear_error(changes, message):
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=32, num_attention_heads=4)
    for key, value in changes.items():
        setattr(config, key, value)
    with pytest.raises(TuneforgeError, match="not supported yet") as e:
        check_supported(config)
    assert message in str(e.value) and "merged" in e.value.hint


def test_a_tokenizer_that_is_not_byte_level_bpe_is_refused():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    with pytest.raises(TuneforgeError, match="only byte-level BPE tokenizers"):
        tokenizer_metadata(fast, 2)


def test_unknown_pre_tokenizer_is_refused_unless_named(tiny):
    _, tokenizer = tiny
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    state["pre_tokenizer"] = {
        "type": "Split",
        "pattern": {"Regex": "x"},
        "behavior": "Isolated",
        "invert": False,
    }
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    odd = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(state)))
    with pytest.raises(TuneforgeError, match="pre-tokenizer has no llama.cpp equivalent"):
        tokenizer_metadata(odd, len(odd))
    assert tokenizer_metadata(odd, len(odd), pre="smollm")["pre"] == "smollm"


def test_unknown_quant_is_refused(tiny, tmp_path):
    model, tokenizer = tiny
    with pytest.raises(TuneforgeError, match="unknown GGUF type 'q4_k'"):
        write_gguf(model, tokenizer, tmp_path / "m.gguf", quant="q4_k", name="x")
