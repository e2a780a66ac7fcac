"""Which transformers model families the GGUF writer can express, and the llama.cpp hyperparameters
of each, as llama.cpp's `convert_hf_to_gguf.py` writes them.

A GGUF file is read by two programs that must agree with the fine-tuned model: llama.cpp (and
Ollama, built on it) and transformers' GGUF loader (the export's own check, and what a user gets
from `from_pretrained(..., gguf_file=...)`). Each reads only some hyperparameters and assumes the
rest. A model whose config differs from what either of them assumes cannot be written faithfully,
so it is refused before any work, naming what differs (`problems`), rather than written into a
file that runs, silently, as a different model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gguf

from tuneforge.errors import TuneforgeError

TRANSFORMERS = "transformers' GGUF loader"
LLAMA_CPP = "llama.cpp"


@dataclass(frozen=True)
class Family:
    """How one transformers `model_type` becomes one llama.cpp architecture."""

    model_type: str
    arch: gguf.MODEL_ARCH
    activation: str
    rotary_pairs: bool = False
    """llama.cpp's LLAMA graph rotates adjacent pairs: Q and K rows are permuted on the way in (and
    transformers' loader un-permutes them); the other architectures rotate halves (NEOX) as HF does."""
    norm_offset: float = 0.0
    """Gemma's RMSNorm multiplies by (1 + w): llama.cpp stores 1 + w, transformers subtracts 1."""
    window_caps_context: bool = False
    """llama.cpp runs this architecture with full attention: the trained context written is capped at
    the model's sliding window, within which both attentions are the same."""
    assumed: tuple[Assumed, ...] = ()
    hparams: Callable[[gguf.GGUFWriter, Any], None] = field(default=lambda writer, config: None)

    @property
    def arch_name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.arch]


@dataclass(frozen=True)
class Assumed:
    """A hyperparameter the GGUF file cannot carry: `reader` assumes `expected(config)` instead."""

    attribute: str
    expected: Callable[[Any], Any]
    reader: str


# --------------------------------------------------------------------------------------------------
# Config access (transformers 5 keeps RoPE settings in `rope_parameters`, per layer type for Gemma 3)


def rope_groups(config) -> dict[str, dict[str, Any]]:
    """RoPE parameters by layer type ("all" when the model has one set)."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    legacy = dict(getattr(config, "rope_scaling", None) or {})
    if params and all(isinstance(v, dict) for v in params.values()):
        return {kind: {**legacy, **p} for kind, p in params.items()}
    return {"all": {**legacy, **params}}


def _global_rope(config) -> dict[str, Any]:
    groups = rope_groups(config)
    return groups.get("full_attention", groups.get("all", {}))


def rope_theta(config) -> float:
    theta = _global_rope(config).get("rope_theta", getattr(config, "rope_theta", None))
    return float(theta if theta is not None else 10000.0)


def local_rope_theta(config) -> float | None:
    theta = rope_groups(config).get("sliding_attention", {}).get("rope_theta")
    return None if theta is None else float(theta)


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def context_length(config, family: Family) -> int:
    window = getattr(config, "sliding_window", None)
    if family.window_caps_context and window and window < config.max_position_embeddings:
        return int(window)
    return int(config.max_position_embeddings)


def _activation(config) -> str:
    return getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", "?")


# --------------------------------------------------------------------------------------------------
# What the two readers assume


def _pattern(n_layers: int, every: int) -> list[str]:
    """Sliding-window layers with every `every`-th one global: llama.cpp's `set_swa_pattern(every)`
    and the default `layer_types` of transformers' Gemma configs."""
    return [
        "full_attention" if (i + 1) % every == 0 else "sliding_attention" for i in range(n_layers)
    ]


def _gemma_attention_scale(big_layers: int) -> Callable[[Any], Any]:
    """llama.cpp scales Gemma's queries by 1/sqrt(head_dim), except for the 27B model (hidden/heads)."""

    def expected(config) -> int:
        if config.num_hidden_layers == big_layers:
            return config.hidden_size // config.num_attention_heads
        return head_dim(config)

    return expected


def _gemma_assumptions(every: int, big_layers: int, softcaps: tuple[Any, Any]) -> tuple:
    return (
        Assumed(
            "layer_types",
            lambda c: _pattern(c.num_hidden_layers, every),
            f"{LLAMA_CPP} and {TRANSFORMERS}",
        ),
        Assumed("query_pre_attn_scalar", _gemma_attention_scale(big_layers), LLAMA_CPP),
        Assumed("query_pre_attn_scalar", lambda c: 256, TRANSFORMERS),
        Assumed("attn_logit_softcapping", lambda c: softcaps[0], TRANSFORMERS),
        Assumed("final_logit_softcapping", lambda c: softcaps[1], TRANSFORMERS),
        Assumed("attention_bias", lambda c: False, f"{LLAMA_CPP} and {TRANSFORMERS}"),
        Assumed("use_bidirectional_attention", lambda c: False, LLAMA_CPP),
    )


# --------------------------------------------------------------------------------------------------
# Hyperparameters beyond the common ones (`write_hparams`)


def _llama_hparams(writer: gguf.GGUFWriter, config) -> None:
    writer.add_rope_dimension_count(head_dim(config))
    if head_dim(config) != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim(config))
        writer.add_value_length(head_dim(config))


def _head_dim_hparams(writer: gguf.GGUFWriter, config) -> None:
    if getattr(config, "head_dim", None):
        writer.add_key_length(head_dim(config))
        writer.add_value_length(head_dim(config))


def _gemma3_hparams(writer: gguf.GGUFWriter, config) -> None:
    _head_dim_hparams(writer, config)
    if (local := local_rope_theta(config)) is not None:
        writer.add_rope_freq_base_swa(local)
    writer.add_sliding_window(config.sliding_window)


def _gemma2_hparams(writer: gguf.GGUFWriter, config) -> None:
    _head_dim_hparams(writer, config)
    writer.add_attn_logit_softcapping(config.attn_logit_softcapping)
    writer.add_final_logit_softcapping(config.final_logit_softcapping)
    writer.add_sliding_window(config.sliding_window)


def _phi3_hparams(writer: gguf.GGUFWriter, config) -> None:
    writer.add_rope_dimension_count(head_dim(config))
    original = _global_rope(config).get("original_max_position_embeddings") or getattr(
        config, "original_max_position_embeddings", None
    )
    if original:
        writer.add_rope_scaling_orig_ctx_len(int(original))
    # llama.cpp reads 0 as "no sliding window" (Phi-4) and runs Phi-3 with full attention anyway
    writer.add_sliding_window(getattr(config, "sliding_window", None) or 0)


_NO_BIAS = Assumed("attention_bias", lambda c: False, TRANSFORMERS)
_NO_MLP_BIAS = Assumed("mlp_bias", lambda c: False, TRANSFORMERS)
_NO_SWA = Assumed("use_sliding_window", lambda c: False, LLAMA_CPP)

FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (
        Family(
            "llama",
            gguf.MODEL_ARCH.LLAMA,
            "silu",
            rotary_pairs=True,
            window_caps_context=True,
            assumed=(_NO_BIAS, _NO_MLP_BIAS),
            hparams=_llama_hparams,
        ),
        # llama.cpp writes MistralForCausalLM as a Llama (its graph has no sliding window)
        Family(
            "mistral",
            gguf.MODEL_ARCH.LLAMA,
            "silu",
            rotary_pairs=True,
            window_caps_context=True,
            hparams=_llama_hparams,
        ),
        Family("qwen2", gguf.MODEL_ARCH.QWEN2, "silu", assumed=(_NO_SWA,)),
        Family(
            "qwen3",
            gguf.MODEL_ARCH.QWEN3,
            "silu",
            # transformers maps no head_dim key for qwen3: it takes Qwen3Config's default
            assumed=(_NO_BIAS, _NO_SWA, Assumed("head_dim", lambda c: 128, TRANSFORMERS)),
            hparams=_head_dim_hparams,
        ),
        Family(
            "gemma3_text",
            gguf.MODEL_ARCH.GEMMA3,
            "gelu_pytorch_tanh",
            norm_offset=1.0,
            assumed=_gemma_assumptions(every=6, big_layers=62, softcaps=(None, None)),
            hparams=_gemma3_hparams,
        ),
        Family(
            "gemma2",
            gguf.MODEL_ARCH.GEMMA2,
            "gelu_pytorch_tanh",
            norm_offset=1.0,
            assumed=_gemma_assumptions(every=2, big_layers=46, softcaps=(50.0, 30.0)),
            hparams=_gemma2_hparams,
        ),
        Family(
            "phi3",
            gguf.MODEL_ARCH.PHI3,
            "silu",
            window_caps_context=True,
            hparams=_phi3_hparams,
        ),
    )
}

SUPPORTED_ARCHITECTURES: tuple[str, ...] = tuple(FAMILIES)
"""transformers `model_type`s the writer handles (variants can still be refused: `problems`)."""


def supports(model_type: str) -> bool:
    """Whether models of this transformers `model_type` can be exported to GGUF (family level;
    `problems(config)` says whether one particular model can)."""
    return model_type in FAMILIES


def family_of(config) -> Family:
    model_type = getattr(config, "model_type", "?")
    if model_type not in FAMILIES:
        raise TuneforgeError(
            f"export --format gguf: the {model_type!r} architecture is not supported yet "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})",
            hint="export --format merged gives a Hugging Face folder that llama.cpp's "
            "convert_hf_to_gguf.py can convert",
        )
    return FAMILIES[model_type]


def problems(config) -> list[str]:
    """What in this model's config the GGUF file could not carry faithfully (empty: exportable)."""
    family = family_of(config)
    found = []
    if _activation(config) != family.activation:
        found.append(
            f"activation {_activation(config)!r} (llama.cpp's {family.arch_name} uses {family.activation!r})"
        )
    for kind, params in rope_groups(config).items():
        where = "" if kind == "all" else f" on {kind} layers"
        rope_type = params.get("rope_type") or params.get("type") or "default"
        if rope_type != "default":
            found.append(f"RoPE scaling {rope_type!r}{where}")
        if float(params.get("partial_rotary_factor") or 1.0) != 1.0:
            found.append(f"partial rotary factor {params['partial_rotary_factor']}{where}")
    local = local_rope_theta(config)
    if family.norm_offset and local not in (None, 10000.0):
        found.append(f"local RoPE base {local:g} ({TRANSFORMERS} assumes 10000)")
    for rule in family.assumed:
        if not hasattr(config, rule.attribute):
            continue
        value, expected = getattr(config, rule.attribute), rule.expected(config)
        if value is None and expected is False:
            continue
        if value != expected:
            found.append(
                f"{rule.attribute}={_short(value)} ({rule.reader} assumes {_short(expected)})"
            )
    return found


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_supported(config) -> Family:
    """Refuse, with one clear message, what this writer cannot express faithfully."""
    family = family_of(config)
    found = problems(config)
    if found:
        raise TuneforgeError(
            f"export --format gguf: this {family.model_type} variant is not supported yet "
            f"({'; '.join(found)})",
            hint="export --format merged and convert it with llama.cpp's convert_hf_to_gguf.py",
        )
    return family


def write_hparams(writer: gguf.GGUFWriter, config, family: Family, vocab_size: int) -> None:
    """The hyperparameters every family writes, then the family's own."""
    writer.add_context_length(context_length(config, family))
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(
        getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    )
    writer.add_rope_freq_base(rope_theta(config))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(vocab_size)
    family.hparams(writer, config)
