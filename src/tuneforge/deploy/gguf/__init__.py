"""Write a fine-tuned causal LM and its tokenizer as one GGUF file, for llama.cpp and Ollama.

Follows what llama.cpp's `convert_hf_to_gguf.py` does for each supported family (Llama, Mistral,
Qwen2, Qwen3, Gemma 2, Gemma 3 text, Phi-3), so llama.cpp, Ollama and transformers' GGUF loader all
read the result as the same model. One module per concern:

- `families`: which models can be written (`supports`, `check_supported`) and their hyperparameters;
- `tensors`: names, layout changes (Q/K permutation, Gemma's 1 + w norms) and storage types;
- `vocab`: the tokenizer metadata (byte-level BPE, or copied from the base model's source GGUF);
- `writer`: the file itself.
"""

from tuneforge.deploy.gguf.families import (
    SUPPORTED_ARCHITECTURES,
    check_supported,
    head_dim,
    problems,
    rope_theta,
    supports,
)
from tuneforge.deploy.gguf.tensors import encode as _encode
from tuneforge.deploy.gguf.tensors import gguf_tensors, permute_rotary
from tuneforge.deploy.gguf.vocab import (
    source_gguf,
    source_gguf_fields,
    tokenizer_metadata,
    vocab_plan,
)
from tuneforge.deploy.gguf.writer import (
    FILE_TYPES,
    QUANTS,
    GgufSummary,
    check_exportable,
    write_gguf,
)

__all__ = [
    "FILE_TYPES",
    "QUANTS",
    "SUPPORTED_ARCHITECTURES",
    "GgufSummary",
    "_encode",
    "check_exportable",
    "check_supported",
    "gguf_tensors",
    "head_dim",
    "permute_rotary",
    "problems",
    "rope_theta",
    "source_gguf",
    "source_gguf_fields",
    "supports",
    "tokenizer_metadata",
    "vocab_plan",
    "write_gguf",
]
