"""The model's weights as llama.cpp names, lays out and stores them.

- names from gguf's own per-architecture map (`blk.N.attn_q.weight`, Phi-3's fused
  `blk.N.attn_qkv.weight` and `blk.N.ffn_up.weight` kept fused, as llama.cpp reads them); the output
  projection is left out when it is tied to the embeddings (readers then reuse `token_embd`);
- Q and K permuted for llama.cpp's LLAMA graph (rotary pairs), Gemma norms stored as 1 + w: the two
  changes llama.cpp's converter makes and transformers' loader undoes;
- 1-D tensors (norms, biases) always F32; 2-D tensors F32, F16 or Q8_0 (a row whose length is not a
  multiple of Q8_0's block of 32 falls back to F16, as llama.cpp does).
"""

from __future__ import annotations

import re

import gguf
import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import quantize

from tuneforge.deploy.gguf.families import Family, family_of
from tuneforge.errors import TuneforgeError


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


def _transform(array: np.ndarray, hf_name: str, stem: str, config, family: Family) -> np.ndarray:
    if family.rotary_pairs and stem.endswith("self_attn.q_proj"):
        return permute_rotary(array, config.num_attention_heads, config.num_attention_heads)
    if family.rotary_pairs and stem.endswith("self_attn.k_proj"):
        return permute_rotary(array, config.num_attention_heads, config.num_key_value_heads)
    if family.norm_offset and hf_name.endswith("norm.weight"):
        return array + np.float32(family.norm_offset)
    return array


def gguf_tensors(model) -> list[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array) for every weight, transformed as llama.cpp wants, tied output left out."""
    config = model.config
    family = family_of(config)
    name_map = gguf.get_tensor_name_map(family.arch, config.num_hidden_layers)
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
                f"export --format gguf: no GGUF name for the model's tensor {hf_name!r}; not supported yet",
                hint="export --format merged and convert it with llama.cpp's convert_hf_to_gguf.py",
            )
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        array = tensor.detach().to("cpu").float().numpy()
        array = _transform(array, hf_name, stem, config, family)
        out.append((f"{gguf_name}{dot}{suffix}", np.ascontiguousarray(array, dtype=np.float32)))
    return out


def encode(array: np.ndarray, quant: str) -> tuple[np.ndarray, GGMLQuantizationType | None]:
    """(data, raw ggml type or None) for one tensor, choosing the type like llama.cpp does."""
    if array.ndim <= 1 or quant == "f32":
        return array.astype(np.float32), None
    if quant == "q8_0" and array.shape[-1] % 32 == 0:
        return quantize(
            array.astype(np.float32), GGMLQuantizationType.Q8_0
        ), GGMLQuantizationType.Q8_0
    return array.astype(np.float16), None


def type_name(data: np.ndarray, raw: GGMLQuantizationType | None) -> str:
    if raw is not None:
        return raw.name
    return {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16"}[data.dtype]
