"""Write a causal LM (Llama family) and its byte-level BPE tokenizer as one GGUF file.

Follows what llama.cpp's `convert_hf_to_gguf.py` does for `LlamaForCausalLM`, so llama.cpp,
Ollama and transformers' GGUF loader all read the result:

- tensor names from gguf's own name map (`blk.N.attn_q.weight`, ...); the output projection is
  left out when it is tied to the embeddings (readers then reuse `token_embd`);
- Q and K projections permuted from Hugging Face's rotary layout (two halves) to llama.cpp's
  (interleaved pairs); transformers' loader undoes exactly this permutation;
- 1-D tensors (norms) always F32; 2-D tensors F32, F16 or Q8_0 (a row whose length is not a
  multiple of Q8_0's block of 32 falls back to F16, as llama.cpp does);
- tokenizer as llama.cpp's "gpt2" model: tokens, token types, merges, special token ids, the
  pre-tokenizer name and the chat template.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, TokenType
from gguf.quants import quantize

from tuneforge.errors import TuneforgeError

QUANTS = ("f32", "f16", "q8_0")
SUPPORTED_ARCHITECTURES = ("llama",)


@dataclass(frozen=True)
class GgufSummary:
    path: Path
    quant: str
    tensors: int
    tensor_types: dict[str, int]  # ggml type name -> how many tensors
    bytes: int


# --------------------------------------------------------------------------------------------------
# What can be exported


def check_supported(config) -> None:
    """Refuse, with one clear message, what this writer cannot express faithfully."""
    model_type = getattr(config, "model_type", "?")
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise TuneforgeError(
            f"export --format gguf: the {model_type!r} architecture is not supported yet "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})",
            hint="export --format merged gives a Hugging Face folder that llama.cpp's "
            "convert_hf_to_gguf.py can convert",
        )
    unsupported = []
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        unsupported.append("bias terms in attention/MLP")
    if getattr(config, "hidden_act", "silu") != "silu":
        unsupported.append(f"activation {config.hidden_act!r}")
    rope_type = _rope(config).get("rope_type", "default")
    if rope_type not in ("default", None):
        unsupported.append(f"RoPE scaling {rope_type!r}")
    if unsupported:
        raise TuneforgeError(
            f"export --format gguf: this Llama variant is not supported yet ({'; '.join(unsupported)})",
            hint="export --format merged and convert it with llama.cpp's convert_hf_to_gguf.py",
        )


def _rope(config) -> dict[str, Any]:
    params = getattr(config, "rope_parameters", None) or {}
    if "full_attention" in params:  # per-layer-type parameters
        params = params["full_attention"]
    legacy = getattr(config, "rope_scaling", None) or {}
    return {**legacy, **params}


def rope_theta(config) -> float:
    theta = _rope(config).get("rope_theta", getattr(config, "rope_theta", None))
    return float(theta if theta is not None else 10000.0)


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


# --------------------------------------------------------------------------------------------------
# Tokenizer


# tokenizer.json pre-tokenizers that match a llama.cpp pre-tokenizer name exactly.
def _pre_tokenizer_name(spec: dict[str, Any] | None) -> str | None:
    if spec is None:
        return None
    if spec.get("type") == "ByteLevel" and spec.get("use_regex", True):
        return "gpt2"
    if spec.get("type") == "Sequence":
        parts = spec.get("pretokenizers", [])
        if (
            len(parts) == 2
            and parts[0].get("type") == "Digits"
            and parts[0].get("individual_digits")
            and parts[1].get("type") == "ByteLevel"
            and parts[1].get("use_regex", True)
        ):
            return "smollm"
    return None


def source_gguf_fields(base_model_path: Path | None) -> dict[str, str]:
    """The pre-tokenizer name and licence of the GGUF file a cached base model came from, if any.

    transformers rebuilds a GGUF tokenizer with plain GPT-2 splitting, so the converted folder no
    longer says what llama.cpp needs (e.g. "smollm" splits digits one by one); the original file does.
    """
    if base_model_path is None:
        return {}
    marker = Path(base_model_path) / "tuneforge_source.json"
    if not marker.is_file():
        return {}
    try:
        source = Path(json.loads(marker.read_text())["gguf"])
    except (ValueError, KeyError):
        return {}
    if not source.is_file():
        return {}
    fields = GGUFReader(source).fields
    found = {}
    for key, name in (("tokenizer.ggml.pre", "pre"), ("general.license", "license")):
        if key in fields:
            found[name] = str(fields[key].contents())
    return found


def tokenizer_metadata(
    tokenizer, vocab_size: int, *, pre: str | None = None, eot: str | None = None
) -> dict[str, Any]:
    """Everything llama.cpp's "gpt2" (byte-level BPE) tokenizer reads from a GGUF file."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    model = state.get("model", {})
    if model.get("type") != "BPE" or (state.get("decoder") or {}).get("type") != "ByteLevel":
        raise TuneforgeError(
            "export --format gguf: only byte-level BPE tokenizers (GPT-2 style, as in SmolLM, Llama 3, "
            f"Qwen) are supported yet; this one is {model.get('type')} with a "
            f"{(state.get('decoder') or {}).get('type')} decoder",
            hint="export --format merged and convert it with llama.cpp's convert_hf_to_gguf.py",
        )
    pre = pre or _pre_tokenizer_name(state.get("pre_tokenizer"))
    if pre is None:
        raise TuneforgeError(
            "export --format gguf: the tokenizer's pre-tokenizer has no llama.cpp equivalent "
            f"tuneforge knows yet: {json.dumps(state.get('pre_tokenizer'))[:200]}",
            hint="export --format merged and convert it with llama.cpp's convert_hf_to_gguf.py",
        )

    vocab = tokenizer.get_vocab()
    if len(vocab) > vocab_size:
        raise TuneforgeError(
            f"export --format gguf: the tokenizer has {len(vocab)} tokens but the model only {vocab_size} embeddings"
        )
    by_id = {i: t for t, i in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i not in by_id:  # embedding rows beyond the tokenizer (padding to a round size)
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(TokenType.CONTROL if added[i].special else TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    probe = tokenizer("a b", add_special_tokens=True)["input_ids"]
    meta: dict[str, Any] = {
        "tokens": tokens,
        "types": types,
        "merges": merges,
        "pre": pre,
        "add_bos": tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id],
        "add_eos": tokenizer.eos_token_id is not None and probe[-1:] == [tokenizer.eos_token_id],
        "special": {
            "bos": tokenizer.bos_token_id,
            "eos": tokenizer.eos_token_id,
            "unk": tokenizer.unk_token_id,
            "pad": tokenizer.pad_token_id,
        },
        "chat_template": tokenizer.chat_template or None,
    }
    if eot is not None and eot in vocab and vocab[eot] != tokenizer.eos_token_id:
        meta["special"]["eot"] = vocab[eot]
    return meta


def _write_tokenizer(writer, meta: dict[str, Any]) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(meta["pre"])
    writer.add_token_list(meta["tokens"])
    writer.add_token_types(meta["types"])
    writer.add_token_merges(meta["merges"])
    special = meta["special"]
    setters = {
        "bos": writer.add_bos_token_id,
        "eos": writer.add_eos_token_id,
        "unk": writer.add_unk_token_id,
        "pad": writer.add_pad_token_id,
        "eot": writer.add_eot_token_id,
    }
    for key, setter in setters.items():
        if special.get(key) is not None:
            setter(int(special[key]))
    writer.add_add_bos_token(bool(meta["add_bos"]))
    writer.add_add_eos_token(bool(meta["add_eos"]))
    writer.add_add_space_prefix(False)
    template = meta["chat_template"]
    if isinstance(template, dict):
        template = [{"name": k, "template": v} for k, v in template.items()]
    if template:
        writer.add_chat_template(template)


# --------------------------------------------------------------------------------------------------
# Tensors


def permute_rotary(weights: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """Hugging Face's Q/K rows (rotary halves) to llama.cpp's (rotary pairs), per head.

    The same reshape as llama.cpp's `LlamaModel.permute`; transformers' GGUF loader applies the
    inverse (`LlamaTensorProcessor._reverse_permute_weights`).
    """
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    rows = weights.shape[0]
    return (
        weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _encode(array: np.ndarray, quant: str):
    """(data, raw ggml type or None) for one tensor, choosing the type like llama.cpp does."""
    if array.ndim <= 1 or quant == "f32":
        return array.astype(np.float32), None
    if quant == "q8_0" and array.shape[-1] % 32 == 0:
        return quantize(
            array.astype(np.float32), GGMLQuantizationType.Q8_0
        ), GGMLQuantizationType.Q8_0
    return array.astype(np.float16), None


def _type_name(data: np.ndarray, raw) -> str:
    if raw is not None:
        return raw.name
    return {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16"}[data.dtype]


def gguf_tensors(model) -> list[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array) for every weight, Q/K permuted, tied output left out."""
    config = model.config
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tied = getattr(config, "tie_word_embeddings", False)
    out: list[tuple[str, np.ndarray]] = []
    seen: set[int] = set()
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        if re.search(r"rotary_emb\.inv_freq$", hf_name):
            continue
        stem, dot, suffix = hf_name.rpartition(".")
        gguf_name = name_map.get_name(stem)
        if gguf_name is None or suffix not in ("weight", "bias"):
            raise TuneforgeError(
                f"export --format gguf: no GGUF name for the model's tensor {hf_name!r}; not supported yet"
            )
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        array = tensor.detach().to("cpu").float().numpy()
        if stem.endswith("self_attn.q_proj"):
            array = permute_rotary(array, config.num_attention_heads, config.num_attention_heads)
        elif stem.endswith("self_attn.k_proj"):
            array = permute_rotary(array, config.num_attention_heads, config.num_key_value_heads)
        out.append((f"{gguf_name}{dot}{suffix}", np.ascontiguousarray(array)))
    return out


FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7}  # gguf.LlamaFileType: ALL_F32, MOSTLY_F16, MOSTLY_Q8_0


def write_gguf(
    model,
    tokenizer,
    path: Path,
    *,
    quant: str,
    name: str,
    description: str = "",
    pre: str | None = None,
    eot: str | None = None,
    license: str | None = None,
) -> GgufSummary:
    """Write `model` (a Llama-family causal LM, LoRA already merged) and `tokenizer` to `path`."""
    if quant not in QUANTS:
        raise TuneforgeError(
            f"export: unknown GGUF type {quant!r}", hint=f"choose one of: {', '.join(QUANTS)}"
        )
    config = model.config
    check_supported(config)
    vocab_size = model.get_input_embeddings().weight.shape[0]
    tok = tokenizer_metadata(tokenizer, vocab_size, pre=pre, eot=eot)

    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    if description:
        writer.add_description(description)
    if license:
        writer.add_license(license)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(rope_theta(config))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(vocab_size)
    writer.add_rope_dimension_count(head_dim(config))
    if head_dim(config) != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim(config))
        writer.add_value_length(head_dim(config))
    writer.add_file_type(FILE_TYPES[quant])
    if quant == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _write_tokenizer(writer, tok)

    counts: dict[str, int] = {}
    n = 0
    for tensor_name, array in gguf_tensors(model):
        data, raw = _encode(array, quant)
        writer.add_tensor(tensor_name, data, raw_dtype=raw)
        type_name = _type_name(data, raw)
        counts[type_name] = counts.get(type_name, 0) + 1
        n += 1
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return GgufSummary(Path(path), quant, n, counts, Path(path).stat().st_size)
