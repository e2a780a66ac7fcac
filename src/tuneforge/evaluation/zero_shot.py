"""Zero-shot classification with an untouched causal LM: the baseline every run is compared to.

The model is asked (through its chat template when it has one, else a plain prompt) to answer with
one of the label words; the label whose word gets the highest total log-probability wins. A few
surface forms of each word are tried (as given, Capitalised) and the best one counts, so the base
model is not penalised for casing.

Every prompt starts with the same tokens (the chat template's opening and system prompt, the
instruction): 48 of the 83 tokens of a movie-review prompt on SmolLM2. A causal LM's position sees
only the positions before it, so those tokens have the same keys and values in every prompt: they
run once, and each batch continues from a copy of their key/value cache (as sft's shared prefix
does in training, `answer_forward.py`). Only the tokens after the shared ones are computed per
prompt, and the output layer runs only at the positions the label words are read from.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence

import numpy as np
import torch
from transformers import DynamicCache

from tuneforge.answer_forward import cache_argument, can_share_prefix, unwrapped
from tuneforge.devices import model_device
from tuneforge.progress import track

# Fewer shared tokens than this are computed with each prompt: a cache copy per batch would cost
# about what it saves.
MIN_SHARED_TOKENS = 8

DEFAULT_INSTRUCTION = (
    "Classify the following text into one of these categories: {labels}. "
    "Answer with the category only."
)


def build_prompt(tokenizer, instruction: str, text: str) -> tuple[str, bool]:
    """The prompt string and whether the chat template was used."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": f"{instruction}\n\nText: {text}"}]
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        ), True
    return f"{instruction}\n\nText: {text}\nAnswer:", False


def _variants(word: str, chat: bool) -> list[str]:
    forms = dict.fromkeys([word, word.capitalize(), word.lower()])
    return [f if chat else f" {f}" for f in forms]


@torch.no_grad()
def zero_shot_scores(
    model,
    tokenizer,
    texts: Sequence[str],
    label_words: Sequence[str],
    instruction: str = DEFAULT_INSTRUCTION,
    *,
    batch_size: int = 8,
    max_length: int = 512,
    description: str = "Zero-shot base model",
    share_prefix: bool = True,
) -> np.ndarray:
    """Log-probability score of each label word for each text: shape (len(texts), len(labels))."""
    instruction = instruction.replace("{labels}", ", ".join(label_words))
    model.eval()
    # One scoring job per (text, label, surface form); identical prefixes are run once.
    jobs: list[tuple[int, int, tuple[int, ...], tuple[int, ...]]] = []
    for t, text in enumerate(texts):
        prompt, chat = build_prompt(tokenizer, instruction, text)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"][-max_length:]
        for k, word in enumerate(label_words):
            for form in _variants(word, chat):
                cand = tuple(tokenizer(form, add_special_tokens=False)["input_ids"])
                jobs.append((t, k, tuple(prompt_ids) + cand[:-1], cand))
    prefixes = sorted({job[2] for job in jobs}, key=len)
    keep = max(len(job[3]) for job in jobs)
    shared = shared_length(prefixes, keep) if share_prefix and can_share_prefix(model) else 0
    cache = _prefix_cache(model, prefixes[0][:shared]) if shared else None
    logprobs: dict[tuple[int, ...], torch.Tensor] = {}
    batches = [prefixes[i : i + batch_size] for i in range(0, len(prefixes), batch_size)]
    for batch in track(batches, description):
        if cache is None:
            found = _last_logprobs(model, tokenizer, batch, keep)
        else:
            found = _continued_logprobs(model, tokenizer, batch, keep, cache, shared)
        for seq, lp in zip(batch, found, strict=True):
            logprobs[seq] = lp
    scores = np.full((len(texts), len(label_words)), -np.inf)
    for t, k, prefix, cand in jobs:
        lp = logprobs[prefix]  # (keep, vocab): the last `keep` positions of the prefix
        total = sum(float(lp[keep - len(cand) + j, tok]) for j, tok in enumerate(cand))
        scores[t, k] = max(scores[t, k], total)
    return scores


def shared_length(sequences: Sequence[tuple[int, ...]], keep: int) -> int:
    """Tokens every sequence starts with, computed once: at most the shortest sequence's length
    less `keep` (the positions read are each sequence's own), 0 below `MIN_SHARED_TOKENS`."""
    common = len(os.path.commonprefix(list(sequences)))
    shared = min(common, min(len(s) for s in sequences) - keep)
    return shared if shared >= MIN_SHARED_TOKENS else 0


def _prefix_cache(model, prefix: tuple[int, ...]) -> DynamicCache:
    """The key/value cache of the shared tokens, a batch of one: the decoder alone, no logits."""
    base = unwrapped(model)
    cache = DynamicCache(config=base.config)
    ids = torch.tensor([prefix], device=model_device(model))
    base.get_decoder()(input_ids=ids, use_cache=True, **{cache_argument(base): cache})
    return cache


def _continued_logprobs(
    model, tokenizer, batch: list[tuple[int, ...]], keep: int, prefix: DynamicCache, shared: int
) -> list[torch.Tensor]:
    """`_last_logprobs` of sequences that all start with the `shared` tokens cached in `prefix`:
    the rest of each, right-padded, runs on a copy of the cache repeated across the batch."""
    rest = [seq[shared:] for seq in batch]
    ends = [len(r) for r in rest]
    width = max(ends)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), shared + width), dtype=torch.long)
    mask[:, :shared] = 1
    for i, r in enumerate(rest):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, shared : shared + len(r)] = 1
    # The output layer runs at the union of the rows' last `keep` positions; each row reads its own.
    wanted = sorted({p for end in ends for p in range(end - keep, end)})
    column = {p: j for j, p in enumerate(wanted)}
    rows = torch.tensor([[column[p] for p in range(end - keep, end)] for end in ends])
    cache = copy.deepcopy(prefix)
    cache.batch_repeat_interleave(len(batch))
    device = model_device(model)
    out = model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        logits_to_keep=torch.tensor(wanted, device=device),
        use_cache=False,
        **{cache_argument(unwrapped(model)): cache},
    )
    logits = out.logits.gather(1, rows.to(device)[..., None].expand(-1, -1, out.logits.shape[-1]))
    return list(torch.log_softmax(logits.float(), dim=-1).cpu())


def _last_logprobs(model, tokenizer, batch: list[tuple[int, ...]], keep: int) -> list[torch.Tensor]:
    """Log-softmax over the vocabulary at the last `keep` positions of each (left-padded) sequence."""
    width = max(len(s) for s in batch)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, seq in enumerate(batch):
        ids[i, width - len(seq) :] = torch.tensor(seq)
        mask[i, width - len(seq) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    device = model_device(model)
    out = model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=positions.to(device),
        logits_to_keep=keep,
    )
    # The last `keep` positions of the prefix predict the candidate tokens: the final position
    # predicts the candidate's last token, so candidate token j of length c sits at index
    # keep - c + j (see zero_shot_scores).
    lp = torch.log_softmax(out.logits[:, -keep:].float(), dim=-1).cpu()
    if lp.shape[1] < keep:  # a prefix shorter than `keep`: left-fill so indexing stays aligned
        fill = torch.full((lp.shape[0], keep - lp.shape[1], lp.shape[2]), -torch.inf)
        lp = torch.cat([fill, lp], dim=1)
    return list(lp)


def softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)
