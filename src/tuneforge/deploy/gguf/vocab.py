"""The tokenizer's half of a GGUF file: what llama.cpp's tokenizer reads from the metadata.

Two routes, chosen before any work (`vocab_plan`):

- a byte-level BPE tokenizer (GPT-2 style: SmolLM, Llama 3, Qwen, Phi-4) is written as llama.cpp's
  "gpt2" model from the tokenizer itself: tokens, token types, merges, special ids, the llama.cpp
  pre-tokenizer name and the chat template;
- a base model that came from a GGUF file whose tokenizer is not "gpt2" (e.g. Gemma 3's
  SentencePiece, llama.cpp's "llama" model) gets the source file's tokenizer metadata copied as it
  is (tokens, scores, types, special ids, flags): transformers rebuilt the run's tokenizer from
  exactly that metadata, so copying it back is the faithful route. The run's tokenizer must still
  hold the same tokens (checked).

Anything else (a SentencePiece or WordPiece tokenizer from a Hugging Face folder) is refused: its
llama.cpp form (scores, byte tokens, space handling) cannot be rebuilt from transformers' fast
tokenizer with certainty.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import GGUFReader, GGUFValueType, TokenType

from tuneforge.errors import TuneforgeError

MANIFEST = "tuneforge_source.json"  # written by tuneforge.models next to a converted GGUF base
_REFUSED_HINT = "export --format merged and convert it with llama.cpp's convert_hf_to_gguf.py"


# --------------------------------------------------------------------------------------------------
# The GGUF file a base model came from


def source_gguf(base_model_path: Path | None) -> Path | None:
    """The GGUF file a cached (converted) base model came from, if it still exists."""
    if base_model_path is None:
        return None
    marker = Path(base_model_path) / MANIFEST
    if not marker.is_file():
        return None
    try:
        source = Path(json.loads(marker.read_text())["gguf"])
    except (ValueError, KeyError, TypeError):
        return None
    return source if source.is_file() else None


def source_gguf_fields(base_model_path: Path | None) -> dict[str, str]:
    """The pre-tokenizer name, tokenizer model and licence of the base model's source GGUF, if any.

    transformers rebuilds a GGUF tokenizer with plain GPT-2 splitting, so the converted folder no
    longer says what llama.cpp needs (e.g. "smollm" splits digits one by one); the original file does.
    """
    source = source_gguf(base_model_path)
    if source is None:
        return {}
    fields = GGUFReader(source).fields
    found = {"path": str(source)}
    for key, name in (
        ("tokenizer.ggml.pre", "pre"),
        ("tokenizer.ggml.model", "tokenizer_model"),
        ("general.license", "license"),
    ):
        if key in fields:
            found[name] = str(fields[key].contents())
    return found


# --------------------------------------------------------------------------------------------------
# Which route


@dataclass(frozen=True)
class VocabPlan:
    route: str  # "gpt2" (from the tokenizer) | "copy" (the source GGUF's metadata)
    source: Path | None = None
    pre: str | None = None  # route "gpt2": llama.cpp's pre-tokenizer name


def vocab_plan(tokenizer, source: Path | None = None, *, pre: str | None = None) -> VocabPlan:
    """How this tokenizer will be written, or one clear refusal (before the model is even loaded).

    `pre`: llama.cpp's pre-tokenizer name when the caller knows it (otherwise the source GGUF's, or
    the one whose splitting matches the tokenizer's pre-tokenizer).
    """
    if source is not None:
        fields = GGUFReader(source).fields
        model = fields.get("tokenizer.ggml.model")
        if model is not None and str(model.contents()) != "gpt2":
            return VocabPlan("copy", source)
        if pre is None and "tokenizer.ggml.pre" in fields:
            pre = str(fields["tokenizer.ggml.pre"].contents())
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    model_type = (state.get("model") or {}).get("type")
    decoder = (state.get("decoder") or {}).get("type")
    if model_type != "BPE" or decoder != "ByteLevel":
        kind = "SentencePiece-style " if decoder in ("Sequence", "Metaspace") else ""
        raise TuneforgeError(
            "export --format gguf: only byte-level BPE tokenizers (GPT-2 style, as in SmolLM, Llama 3, "
            f"Qwen) or a base model loaded from a .gguf file are supported yet; this one is a "
            f"{kind}{model_type} tokenizer with a {decoder} decoder",
            hint=_REFUSED_HINT,
        )
    pre = pre or _pre_tokenizer_name(state.get("pre_tokenizer"))
    if pre is None:
        raise TuneforgeError(
            "export --format gguf: the tokenizer's pre-tokenizer has no llama.cpp equivalent "
            f"tuneforge knows yet: {json.dumps(state.get('pre_tokenizer'))[:200]}",
            hint=_REFUSED_HINT,
        )
    return VocabPlan("gpt2", None, pre)


# --------------------------------------------------------------------------------------------------
# Route "gpt2": from a byte-level BPE tokenizer


# Split regexes of tokenizer.json files that llama.cpp's pre-tokenizers reproduce (llama-vocab.cpp
# keeps each original regex beside its own adapted, case-folding one).
_SPLIT_REGEXES = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
}


def _pre_tokenizer_name(spec: dict[str, Any] | None) -> str | None:
    """The llama.cpp pre-tokenizer whose splitting matches a tokenizer.json pre-tokenizer exactly."""
    if spec is None:
        return None
    if spec.get("type") == "ByteLevel" and spec.get("use_regex", True):
        return "gpt-2"  # llama.cpp's name (llama-vocab.cpp); it refuses to load "gpt2"
    if spec.get("type") != "Sequence":
        return None
    parts = spec.get("pretokenizers", [])
    if len(parts) != 2 or parts[1].get("type") != "ByteLevel":
        return None
    first, byte_level_regex = parts[0], parts[1].get("use_regex", True)
    if first.get("type") == "Digits" and first.get("individual_digits") and byte_level_regex:
        return "smollm"
    if (
        first.get("type") == "Split"
        and first.get("behavior") == "Isolated"
        and not first.get("invert")
        and not byte_level_regex
    ):
        return _SPLIT_REGEXES.get((first.get("pattern") or {}).get("Regex"))
    return None


def tokenizer_metadata(
    tokenizer, vocab_size: int, *, pre: str | None = None, eot: str | None = None
) -> dict[str, Any]:
    """Everything llama.cpp's "gpt2" (byte-level BPE) tokenizer reads from a GGUF file."""
    pre = vocab_plan(tokenizer, pre=pre).pre
    model = json.loads(tokenizer.backend_tokenizer.to_str()).get("model", {})

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


def _write_special(writer, special: dict[str, int | None]) -> None:
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


def _write_chat_template(writer, template) -> None:
    if isinstance(template, dict):
        template = [{"name": k, "template": v} for k, v in template.items()]
    if template:
        writer.add_chat_template(template)


def write_gpt2_vocab(writer, meta: dict[str, Any]) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(meta["pre"])
    writer.add_token_list(meta["tokens"])
    writer.add_token_types(meta["types"])
    writer.add_token_merges(meta["merges"])
    _write_special(writer, meta["special"])
    writer.add_add_bos_token(bool(meta["add_bos"]))
    writer.add_add_eos_token(bool(meta["add_eos"]))
    writer.add_add_space_prefix(False)
    _write_chat_template(writer, meta["chat_template"])


# --------------------------------------------------------------------------------------------------
# Route "copy": the source GGUF's tokenizer metadata


@dataclass(frozen=True)
class CopiedField:
    key: str
    value: Any
    vtype: GGUFValueType
    sub_type: GGUFValueType | None


def copied_vocab(
    tokenizer, source: Path, vocab_size: int, *, eot: str | None = None
) -> list[CopiedField]:
    """The source GGUF's `tokenizer.*` fields, after checking the run's tokenizer still matches them.

    The chat template is the run's when it has one (a recipe may set it); an end-of-turn token the
    run knows and the source does not name is added.
    """
    fields = GGUFReader(source).fields
    tokens = [str(t) for t in fields["tokenizer.ggml.tokens"].contents()]
    if len(tokens) != vocab_size:
        raise TuneforgeError(
            f"export --format gguf: the model has {vocab_size} embeddings but its source GGUF "
            f"{source.name} lists {len(tokens)} tokens: the vocabulary changed since, and the source's "
            "tokenizer metadata no longer describes it",
            hint=_REFUSED_HINT,
        )
    ours = tokenizer.convert_ids_to_tokens(list(range(min(len(tokenizer), vocab_size))))
    # transformers' GGUF conversion spells SentencePiece spaces as "▁" where the file has " "
    differ = [i for i, t in enumerate(ours) if t is not None and t != tokens[i].replace(" ", "▁")]
    if differ or len(tokenizer) > vocab_size:
        raise TuneforgeError(
            f"export --format gguf: the run's tokenizer differs from its source GGUF {source.name} "
            f"({len(differ)} tokens differ, e.g. id {differ[0] if differ else len(tokens)}); the source's "
            "tokenizer metadata cannot be reused",
            hint=_REFUSED_HINT,
        )
    out = []
    for key, field in fields.items():
        if not key.startswith("tokenizer.") or key == "tokenizer.chat_template":
            continue
        vtype = field.types[0]
        sub_type = field.types[1] if vtype == GGUFValueType.ARRAY else None
        out.append(CopiedField(key, field.contents(), vtype, sub_type))
    template = tokenizer.chat_template or (
        fields["tokenizer.chat_template"].contents()
        if "tokenizer.chat_template" in fields
        else None
    )
    if template:
        out.append(CopiedField("tokenizer.chat_template", template, GGUFValueType.STRING, None))
    if eot is not None and "tokenizer.ggml.eot_token_id" not in fields:
        eot_id = tokenizer.convert_tokens_to_ids(eot)
        if (
            isinstance(eot_id, int)
            and eot_id != tokenizer.eos_token_id
            and eot_id != tokenizer.unk_token_id
        ):
            out.append(
                CopiedField("tokenizer.ggml.eot_token_id", eot_id, GGUFValueType.UINT32, None)
            )
    return out


def write_copied_vocab(writer, copied: list[CopiedField]) -> None:
    for f in copied:
        if f.key == "tokenizer.chat_template":
            _write_chat_template(writer, f.value)
        else:
            writer.add_key_value(f.key, f.value, f.vtype, f.sub_type)
