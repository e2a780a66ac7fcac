"""Text generation for causal LMs: the one decoding loop behind eval, generate, chat and predict.

`model.generate` does the work; this module only batches token-id prompts (left padding, shortest
first), stops at the given stop tokens and returns the new text. Greedy by default, so the same
run and prompt always give the same answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from tuneforge.progress import track


@dataclass(frozen=True)
class Sampling:
    """How to pick tokens: temperature 0 means greedy."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0


@dataclass
class Generation:
    text: str
    n_tokens: int  # new tokens, without the stop token
    stopped: bool  # ended on a stop token (False: cut at max_new_tokens)
    # the new tokens as generated, through the stop token when there was one (scoring them again)
    token_ids: list[int] = field(default_factory=list)


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[list[int]],
    stop_ids: list[int],
    sampling: Sampling = Sampling(),
    *,
    batch_size: int = 8,
    description: str | None = None,
    stop_strings: Sequence[str] = (),
    **generate_kwargs,
) -> list[Generation]:
    """Continue each prompt (token ids) until a stop token or `max_new_tokens`.

    `stop_strings` end an answer too (the text is cut before them). Other keywords (a streamer,
    stopping criteria, `sequence_bias`) go to `model.generate` unchanged: the server uses them.
    """
    from transformers import GenerationConfig  # deferred: CLI start of report (transformers)

    was_training = model.training
    model.eval()
    greedy = sampling.temperature <= 0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    config = GenerationConfig(
        max_new_tokens=sampling.max_new_tokens,
        do_sample=not greedy,
        temperature=None if greedy else sampling.temperature,
        top_p=None if greedy else sampling.top_p,
        top_k=None,
        eos_token_id=stop_ids,
        pad_token_id=pad,
    )
    if stop_strings:
        generate_kwargs.update(stop_strings=list(stop_strings), tokenizer=tokenizer)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[Generation | None] = [None] * len(prompts)
    device = next(model.parameters()).device
    try:
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        for idx in track(batches, description) if description and len(batches) > 1 else batches:
            width = max(len(prompts[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
                mask[row, width - len(prompts[i]) :] = 1
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                generation_config=config,
                **generate_kwargs,
            )
            for row, i in enumerate(idx):
                results[i] = finish(tokenizer, out[row, width:].tolist(), stop_ids, stop_strings)
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]


def finish(
    tokenizer, new_ids: list[int], stop_ids: list[int], stop_strings: Sequence[str] = ()
) -> Generation:
    """The answer in `new_ids`: up to the first stop token, decoded, cut before the first stop
    string, stripped. Public so the server's batched decoding ends its rows exactly so."""
    stops = [k for k, t in enumerate(new_ids) if t in stop_ids]
    end = stops[0] if stops else len(new_ids)
    text = tokenizer.decode(new_ids[:end], skip_special_tokens=True)
    cuts = [text.find(s) for s in stop_strings if s in text]
    if cuts:
        text = text[: min(cuts)]
    return Generation(text.strip(), end, bool(stops or cuts), new_ids[: end + 1 if stops else end])
