"""Zero-shot classification with an untouched causal LM: the baseline every run is compared to.

The model is asked (through its chat template when it has one, else a plain prompt) to answer with
one of the label words; the label whose word gets the highest total log-probability wins. A few
surface forms of each word are tried (as given, Capitalised) and the best one counts, so the base
model is not penalised for casing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from tuneforge.devices import model_device
from tuneforge.progress import track

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
    logprobs: dict[tuple[int, ...], torch.Tensor] = {}
    batches = [prefixes[i : i + batch_size] for i in range(0, len(prefixes), batch_size)]
    for batch in track(batches, description):
        for seq, lp in zip(batch, _last_logprobs(model, tokenizer, batch, keep), strict=True):
            logprobs[seq] = lp
    scores = np.full((len(texts), len(label_words)), -np.inf)
    for t, k, prefix, cand in jobs:
        lp = logprobs[prefix]  # (keep, vocab): the last `keep` positions of the prefix
        total = sum(float(lp[keep - len(cand) + j, tok]) for j, tok in enumerate(cand))
        scores[t, k] = max(scores[t, k], total)
    return scores


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
