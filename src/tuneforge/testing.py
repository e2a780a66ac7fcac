"""Tiny random models for tests and quick checks: built locally in a second, no downloads."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "The film was wonderful, moving and beautifully acted.",
    "A dull, boring mess; I want my money back.",
    "Classify the following text into one of these categories: positive, negative.",
    "Answer with the category only. Text: Summarise this report in one sentence.",
    "The quick brown fox jumps over the lazy dog 0123456789.",
    "Security alert: failed login from 203.0.113.7 for user admin; category phishing malware benign.",
] * 20


def build_tiny_tokenizer(vocab_size: int = 400, chat_template: bool = True):
    """A byte-level BPE tokenizer with ChatML special tokens, trained on a few sentences."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    if chat_template:
        fast.chat_template = CHATML_TEMPLATE
    return fast


# A Gemma-2-style template: no system role (it raises, as Gemma 2's and Mistral v0.1's do), turns
# as <start_of_turn>user / model. tuneforge must fold a system prompt into the first user turn.
NO_SYSTEM_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<|im_start|>' + role + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>model\n' }}{% endif %}"
)

# The model families users fine-tune, each as its Hugging Face config type and the fields that
# make a tiny copy of it exercise what the family has that Llama has not.
FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma3", "phi3")


def _family_config(family: str, tokenizer, hidden: int, layers: int, heads: int, kv_heads: int):
    from transformers import (  # deferred: a config per family, imported when a test builds one
        Gemma3TextConfig,
        LlamaConfig,
        MistralConfig,
        Phi3Config,
        Qwen2Config,
        Qwen3Config,
    )

    common = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden,
        "intermediate_size": hidden * 2,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "max_position_embeddings": 1024,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,  # None without a pad token
    }
    if family == "llama":
        return LlamaConfig(**common, tie_word_embeddings=True)
    if family == "mistral":  # untied output, sliding-window attention
        return MistralConfig(**common, sliding_window=512, tie_word_embeddings=False)
    if family == "qwen2":  # biases on q, k, v
        return Qwen2Config(**common, tie_word_embeddings=True)
    if family == "qwen3":  # RMSNorm on q and k; head_dim 128 whatever the width, as released
        return Qwen3Config(**common, head_dim=128, tie_word_embeddings=True)
    if family == "gemma3":
        # (1 + w) norms, scaled embeddings, q/k norms; head_dim = query scale = 256 as released
        # (270M to 12B); the stock pattern of 5 local (sliding window, here 8 tokens: shorter
        # than a prompt) to 1 global layer, so 6 layers hold both kinds
        return Gemma3TextConfig(
            **common,
            head_dim=256,
            query_pre_attn_scalar=256,
            sliding_window=8,
            tie_word_embeddings=True,
        )
    if family == "phi3":  # fused qkv_proj and gate_up_proj, untied output
        return Phi3Config(**common, tie_word_embeddings=False)
    raise ValueError(f"unknown family {family!r} (known: {', '.join(FAMILIES)})")


def build_tiny_model(
    path: str | Path,
    family: str = "llama",
    *,
    hidden_size: int = 32,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    chat_template: bool | str = True,
    pad_token: bool = True,
    seed: int = 0,
) -> Path:
    """Write a random tiny model of a family (2 layers, hidden 32) and its tokenizer as a folder.

    `chat_template`: True for ChatML, False for none (a base model), or a template of its own
    (`NO_SYSTEM_TEMPLATE`: a family whose template refuses a system message). `pad_token`: False
    for a tokenizer and config without one, as Llama 3's and Mistral's ship.
    """
    path = Path(path)
    tokenizer = build_tiny_tokenizer(chat_template=chat_template is True)
    if isinstance(chat_template, str):
        tokenizer.chat_template = chat_template
    if not pad_token:
        tokenizer.pad_token = None
    config = _family_config(family, tokenizer, hidden_size, layers, heads, kv_heads)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def build_tiny_llama(path: str | Path, **kwargs) -> Path:
    """Write a random tiny Llama (2 layers, hidden 32) and its tokenizer as a Hugging Face folder."""
    return build_tiny_model(path, "llama", **kwargs)
