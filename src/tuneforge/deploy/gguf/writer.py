"""One GGUF file from a fine-tuned causal LM and its tokenizer: metadata, then tensors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf

from tuneforge.deploy.gguf.families import check_supported, write_hparams
from tuneforge.deploy.gguf.tensors import encode, gguf_tensors, type_name
from tuneforge.deploy.gguf.vocab import (
    copied_vocab,
    tokenizer_metadata,
    vocab_plan,
    write_copied_vocab,
    write_gpt2_vocab,
)
from tuneforge.errors import TuneforgeError

QUANTS = ("f32", "f16", "q8_0")
FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7}  # gguf.LlamaFileType: ALL_F32, MOSTLY_F16, MOSTLY_Q8_0


@dataclass(frozen=True)
class GgufSummary:
    path: Path
    quant: str
    tensors: int
    tensor_types: dict[str, int]  # ggml type name -> how many tensors
    bytes: int
    architecture: str = "llama"
    tokenizer: str = "gpt2"  # "gpt2" (from the tokenizer) | "copy" (the source GGUF's metadata)


def check_exportable(config, tokenizer, source: Path | None = None) -> None:
    """Everything `write_gguf` would refuse, checked before any weights are loaded or merged."""
    check_supported(config)
    vocab_plan(tokenizer, source)


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
    source: Path | None = None,
) -> GgufSummary:
    """Write `model` (a supported causal LM, LoRA already merged) and `tokenizer` to `path`.

    `source`: the GGUF file the base model came from, whose tokenizer metadata is reused when it is
    not a byte-level BPE one (see `vocab`).
    """
    if quant not in QUANTS:
        raise TuneforgeError(
            f"export: unknown GGUF type {quant!r}", hint=f"choose one of: {', '.join(QUANTS)}"
        )
    config = model.config
    family = check_supported(config)
    vocab_size = model.get_input_embeddings().weight.shape[0]
    plan = vocab_plan(tokenizer, source, pre=pre)
    if plan.route == "copy":
        copied = copied_vocab(tokenizer, plan.source, vocab_size, eot=eot)
    else:
        meta = tokenizer_metadata(tokenizer, vocab_size, pre=plan.pre, eot=eot)

    writer = gguf.GGUFWriter(path, family.arch_name)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    if description:
        writer.add_description(description)
    if license:
        writer.add_license(license)
    write_hparams(writer, config, family, vocab_size)
    writer.add_file_type(FILE_TYPES[quant])
    if quant == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if plan.route == "copy":
        write_copied_vocab(writer, copied)
    else:
        write_gpt2_vocab(writer, meta)

    counts: dict[str, int] = {}
    n = 0
    for tensor_name, array in gguf_tensors(model):
        data, raw = encode(array, quant)
        writer.add_tensor(tensor_name, data, raw_dtype=raw)
        counts[type_name(data, raw)] = counts.get(type_name(data, raw), 0) + 1
        n += 1
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return GgufSummary(
        Path(path), quant, n, counts, Path(path).stat().st_size, family.arch_name, plan.route
    )
