"""Several generation requests decoded together: one `model.generate` over their left-padded
prompts, each row with its own `max_tokens`, stop strings, temperature, top_p and logit_bias.

Why: on a CPU one decoding step for 8 rows costs little more than for one (the weights are read
once per step, whatever the rows), so answering concurrent requests together multiplies the
server's throughput. transformers does the decoding; this module only supplies what differs per
row: a logits processor for the sampling settings (`RowSampling`) and a stopping criterion
(`RowTracker`) that follows each row, streams its tokens and hands its answer back the moment the
row ends, so a short answer is not held back by a longer one in the same batch.

Rows must share their stop token ids (the caller groups them so): transformers ends a row on them
exactly as the one-request path (tuneforge.generation) does, and pads it afterwards.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from tuneforge.generation import Generation, finish


@dataclass
class Row:
    """One request in a batch, and where its tokens and answer go (called in the decoding
    thread: they must hand over to the event loop themselves)."""

    prompt: list[int]
    max_tokens: int
    temperature: float  # 0: greedy
    top_p: float
    on_done: Callable[[Generation], None]
    stop_strings: list[str] = field(default_factory=list)
    logit_bias: dict[int, float] = field(default_factory=dict)
    on_token: Callable[[int], None] | None = None  # streaming: each new token as it comes
    cancel: threading.Event | None = None  # set: the row ends now (its client left)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


class RowSampling(LogitsProcessor):
    """Each row's logit_bias, then, for the rows that sample, its own temperature, the model's
    top_k and its own top_p, in the order and the way transformers' warpers apply them to a
    one-request `generate` (which takes top_k from the model's generation config, else 50); a
    greedy row in a sampling batch keeps only its likeliest token, which sampling then picks."""

    def __init__(self, rows: list[Row], top_k: int = 0) -> None:
        self.rows = rows
        self.top_k = top_k
        self.samples = not all(r.greedy for r in rows)
        self.greedy = torch.tensor([r.greedy for r in rows])
        self.temperature = torch.tensor([r.temperature if not r.greedy else 1.0 for r in rows])
        # top_p 1 filters nothing (transformers skips its warper then: so do we, per row)
        self.cut = torch.tensor([1 - r.top_p if r.top_p < 1 else -1.0 for r in rows])
        self.bias: torch.Tensor | None = None

    def _bias(self, scores: torch.Tensor) -> torch.Tensor | None:
        if self.bias is None and any(r.logit_bias for r in self.rows):
            self.bias = torch.zeros_like(scores)
            for i, row in enumerate(self.rows):
                for token, value in row.logit_bias.items():
                    self.bias[i, token] = value
        return self.bias

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        bias = self._bias(scores)
        if bias is not None:
            scores = scores + bias.to(scores.device)
        if not self.samples:
            return scores
        device = scores.device
        out = scores / self.temperature.to(device, scores.dtype)[:, None]
        if self.top_k > 0:
            kth = torch.topk(out, min(self.top_k, out.size(-1)))[0][..., -1, None]
            out = out.masked_fill(out < kth, -float("inf"))
        sorted_logits, sorted_indices = torch.sort(out, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= self.cut.to(device, cumulative.dtype)[:, None]
        remove[..., -1:] = False  # keep at least the likeliest token
        out = out.masked_fill(remove.scatter(1, sorted_indices, remove), -float("inf"))
        greedy = self.greedy.to(device)
        if greedy.any():
            only = torch.full_like(scores, -float("inf"))
            best = scores.argmax(dim=-1, keepdim=True)
            only.scatter_(1, best, 0.0)
            out = torch.where(greedy[:, None], only, out)
        return out


class RowTracker(StoppingCriteria):
    """Follows each row after every decoding step: collects its new token, streams it, and ends
    the row (answer handed to `on_done`) at a stop token, a stop string, its `max_tokens` or its
    cancellation; the others decode on."""

    def __init__(self, tokenizer, rows: list[Row], stop_ids: list[int]) -> None:
        self.tokenizer = tokenizer
        self.rows = rows
        self.stop_ids = set(stop_ids)
        self._stop_list = stop_ids
        self.tokens: list[list[int]] = [[] for _ in rows]
        self.done = [False] * len(rows)

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        new = input_ids[:, -1].tolist()
        for i, row in enumerate(self.rows):
            if self.done[i]:
                continue
            ids = self.tokens[i]
            ids.append(new[i])
            if row.on_token is not None:
                row.on_token(new[i])
            if (
                new[i] in self.stop_ids
                or len(ids) >= row.max_tokens
                or (row.cancel is not None and row.cancel.is_set())
                or self._stop_string(row, ids)
            ):
                self.end(i)
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)

    def _stop_string(self, row: Row, ids: list[int]) -> bool:
        if not row.stop_strings:
            return False
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return any(s in text for s in row.stop_strings)

    def end(self, i: int) -> None:
        """The row's answer, as the one-request path would give it, to its `on_done`."""
        self.done[i] = True
        row = self.rows[i]
        row.on_done(finish(self.tokenizer, self.tokens[i], self._stop_list, row.stop_strings))

    def end_all(self) -> None:
        """Rows still open when decoding stopped (it ends at the longest `max_tokens`: only a
        model that stops early leaves any) get what they have."""
        for i, done in enumerate(self.done):
            if not done:
                self.end(i)


@torch.no_grad()
def generate_rows(model, tokenizer, rows: list[Row], stop_ids: list[int]) -> None:
    """Decode `rows` together; each row's `on_done` is called once, when that row ends. An
    exception leaves the unfinished rows' `on_done` uncalled (the caller fails them)."""
    from transformers import GenerationConfig  # deferred: CLI start (transformers)

    top_k = getattr(model.generation_config, "top_k", None)
    sampling = RowSampling(rows, 50 if top_k is None else top_k)  # transformers' default: 50
    tracker = RowTracker(tokenizer, rows, stop_ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    config = GenerationConfig(
        max_new_tokens=max(r.max_tokens for r in rows),
        do_sample=sampling.samples,
        # per row, in RowSampling; explicit, or the model's generation config would fill them in
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        eos_token_id=stop_ids,
        pad_token_id=pad,
    )
    width = max(len(r.prompt) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row.prompt) :] = torch.tensor(row.prompt)
        mask[i, width - len(row.prompt) :] = 1
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            generation_config=config,
            logits_processor=LogitsProcessorList([sampling]),
            stopping_criteria=StoppingCriteriaList([tracker]),
        )
    finally:
        model.train(was_training)
    tracker.end_all()
