"""The memorisation audit of sft and pretrain runs: does the model repeat its training data?

For a seeded sample of training examples and an equal sample of held-out ones (the run's
validation and test rows), the model is prompted with a prefix and decodes greedily:

- sft: the prompt is the chat up to the last assistant answer, rendered with the run's chat
  template and system prompt (data/chat.py, as training rendered it), plus the answer's first P
  tokens; the true continuation is the answer's next S tokens.
- pretrain: the prompt is a document's first P tokens; the continuation its next S tokens.

Measured per example: **verbatim** (the S greedy tokens equal the true ones exactly),
**near-verbatim** (difflib's SequenceMatcher ratio of the two token lists >= 0.9) and the mean
token **loss** on the true continuation. Per side: the rates and the mean loss; between them the
loss gap (held-out minus train) and a membership-inference **AUC** (scikit-learn's
roc_auc_score of -loss as a score for "was trained on": 0.5, the loss tells nothing; 1.0, it
tells training rows apart every time).

Canaries (data/canaries.py): for each, whether greedy decoding from its prefix reproduces the
secret, and its **exposure** (Carlini et al. 2019): the rank of the true secret's log-probability
among `candidates` random secrets of the same format plus itself, exposure = log2(candidates + 1)
- log2(rank); the most a secret can show is log2(candidates + 1) bits (rank 1).

The untouched base model is measured the same way beside the tuned one: what it already knew.
A warning (WARNING_RULE) says when the tuned model reproduces training examples far more often
than held-out ones.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any

import torch
from sklearn.metrics import roc_auc_score

from tuneforge.data.canaries import Canary, random_secret
from tuneforge.data.chat import ChatFields, conversation, render, with_system_prompt
from tuneforge.data.loading import Splits
from tuneforge.data.readers import row_where
from tuneforge.errors import TuneforgeError
from tuneforge.generation import Sampling, generate
from tuneforge.progress import track
from tuneforge.runs.provenance import sha256_path

FILE = "memorization.json"
NEAR_VERBATIM_RATIO = 0.9  # SequenceMatcher ratio of generated vs true continuation tokens
# The warning: training rows reproduced verbatim at least twice as often as held-out ones and at
# least 5 points more, or the loss telling them apart (AUC >= 0.7, with >= 10 rows a side), or a
# canary reproduced.
RATE_FACTOR, RATE_POINTS, AUC_LIMIT, AUC_MIN_ROWS = 2.0, 0.05, 0.7, 10
WARNING_RULE = (
    f"train verbatim rate >= {RATE_FACTOR:g}x the held-out rate and >= {RATE_POINTS * 100:g} "
    f"points more, or membership AUC >= {AUC_LIMIT} (>= {AUC_MIN_ROWS} examples a side), or a "
    "canary reproduced"
)


@dataclass(frozen=True)
class Options:
    """What the audit draws and measures; checked before any model is loaded."""

    samples: int = 32
    prefix_tokens: int | None = None  # None: the task's default (sft 0, pretrain 32)
    suffix_tokens: int = 32
    seed: int = 0
    candidates: int = 1000
    batch_size: int = 8

    def __post_init__(self) -> None:
        for name, low in (
            ("samples", 1),
            ("suffix_tokens", 1),
            ("candidates", 1),
            ("batch_size", 1),
        ):
            if getattr(self, name) < low:
                raise TuneforgeError(
                    f"memorization audit: {name.replace('_', '-')} must be at least {low}, "
                    f"got {getattr(self, name)}"
                )
        if self.prefix_tokens is not None and self.prefix_tokens < 0:
            raise TuneforgeError(
                f"memorization audit: prefix-tokens must be 0 or more, got {self.prefix_tokens}"
            )


@dataclass(frozen=True)
class Sample:
    """One example cut for the audit: the prompt's tokens and the true continuation's."""

    where: str
    prompt_ids: list[int]
    target_ids: list[int]


# --------------------------------------------------------------------------------------------------
# How each task is prompted


class ChatView:
    """sft: chats rendered with the run's template; the continuation is the last answer's."""

    default_prefix = 0

    def __init__(self, tokenizer, fields: ChatFields, stop_ids: list[int]):
        self.tokenizer, self.fields, self.stop_ids = tokenizer, fields, stop_ids

    def sample(self, row: dict, source: str, prefix: int, suffix: int) -> Sample | None:
        """The chat up to the answer plus `prefix` answer tokens; the next `suffix` tokens."""
        where = row_where(source, row)
        messages = conversation(row, self.fields, where)
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        head = render(self.tokenizer, messages[:last], add_generation_prompt=True)
        text = render(self.tokenizer, messages[: last + 1])
        answer = messages[last]["content"]
        start = text.find(answer, len(head))
        if start < 0:
            return None
        return _cut(self.tokenizer, text, start, start + len(answer), prefix, suffix, where)

    def canary_prompt(self, canary: Canary) -> str:
        """The canary's question as a user turn, then the answer up to the secret."""
        chat = with_system_prompt(
            [{"role": "user", "content": canary.question}], self.fields.system_prompt
        )
        return render(self.tokenizer, chat, add_generation_prompt=True) + canary.prefix


class TextView:
    """pretrain: plain text, as the corpus was trained (no template)."""

    default_prefix = 32

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.stop_ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def sample(self, row: dict, source: str, prefix: int, suffix: int) -> Sample | None:
        where = row_where(row.get("_source") or source, row)
        text = row["text"]
        return _cut(self.tokenizer, text, 0, len(text), prefix, suffix, where)

    def canary_prompt(self, canary: Canary) -> str:
        return canary.prefix


def _cut(tokenizer, text: str, start: int, end: int, prefix: int, suffix: int, where: str):
    """Tokens of `text` (as training tokenised it); the span [start, end) is split after `prefix`
    of its tokens; None when the span has no token left after them."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    span = [i for i, (a, b) in enumerate(offsets) if start <= a < end and b > a]
    if len(span) <= prefix:
        return None
    cut = span[prefix]
    return Sample(where, list(ids[:cut]), list(ids[cut : min(cut + suffix, span[-1] + 1)]))


# --------------------------------------------------------------------------------------------------
# The run's rows, read back as training read them


def read_run_splits(task, recipe, recorded: dict[str, Any]) -> Splits:
    """The run's train, validation and test rows, from its recorded files (run.json `data`:
    path, absolute path, sha256), split as training split them; a file that is gone or changed
    since is a user error (the audit would be about other data)."""
    updates: dict[str, Any] = {}
    problems = []
    for split in ("train", "validation", "test"):
        configured = getattr(recipe.data, split)
        if configured is None:  # validation_split: drawn from train with the run's seed
            continue
        record = recorded.get(split, {})
        candidates = [record.get("resolved"), record.get("path"), str(configured)]
        path = next((Path(c) for c in candidates if c and Path(c).exists()), None)
        if path is None:
            problems.append(f"its {split} file {record.get('path') or configured} is gone")
        elif record.get("sha256") and sha256_path(path) != record["sha256"]:
            problems.append(
                f"its {split} file {path} changed since the run trained (sha256 "
                f"{record['sha256'][:12]} recorded)"
            )
        else:
            updates[split] = path
    if problems:
        raise TuneforgeError(
            "memorization audit: the run's data cannot be read back: " + "; ".join(problems),
            hint="restore the file(s) as they were when the run trained",
        )
    data = recipe.data.model_copy(update=updates)
    try:
        return task.read(recipe.model_copy(update={"data": data}), Path("."))
    except TuneforgeError as e:
        raise TuneforgeError(
            f"memorization audit: reading the run's data: {e.message}", hint=e.hint
        ) from None


def draw(view, rows: list[dict], source: str, n: int, options: Options, prefix: int, salt: str):
    """Up to `n` samples from `rows` in a seeded order; rows too short for the prefix are passed
    over (counted in the second value)."""
    order = list(range(len(rows)))
    random.Random(f"{options.seed}-{salt}").shuffle(order)
    out, short = [], 0
    for i in order:
        if len(out) == n:
            break
        found = view.sample(rows[i], source, prefix, options.suffix_tokens)
        if found is None:
            short += 1
        else:
            out.append(found)
    return out, short


# --------------------------------------------------------------------------------------------------
# The arithmetic (hand-checked in tests/unit/test_memorization.py)


def similarity(generated: list[int], target: list[int]) -> float:
    """difflib's ratio of the two token lists (1.0: the same)."""
    return SequenceMatcher(None, generated, target, autojunk=False).ratio()


def verbatim(generated: list[int], target: list[int]) -> bool:
    """The first len(target) generated tokens are exactly the target's."""
    return list(generated[: len(target)]) == list(target)


def membership_auc(train_losses: list[float], held_out_losses: list[float]) -> float | None:
    """How well a low loss marks training rows: ROC AUC of -loss (None without both sides)."""
    if not train_losses or not held_out_losses:
        return None
    labels = [1] * len(train_losses) + [0] * len(held_out_losses)
    scores = [-x for x in (*train_losses, *held_out_losses)]
    return float(roc_auc_score(labels, scores))


def exposure(secret_logprob: float, candidate_logprobs: list[float]) -> tuple[int, float]:
    """(rank, exposure in bits) of the secret among itself and the candidates: rank 1 is the most
    likely; ties count in the secret's favour. exposure = log2(len(candidates) + 1) - log2(rank)."""
    rank = 1 + sum(lp > secret_logprob for lp in candidate_logprobs)
    return rank, math.log2(len(candidate_logprobs) + 1) - math.log2(rank)


def side_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Rates and mean loss of one side's per-example results."""
    n = len(rows)
    if not n:
        return {"n": 0, "verbatim": None, "near_verbatim": None, "similarity": None, "loss": None}
    return {
        "n": n,
        "verbatim": sum(r["verbatim"] for r in rows) / n,
        "near_verbatim": sum(r["near_verbatim"] for r in rows) / n,
        "similarity": sum(r["similarity"] for r in rows) / n,
        "loss": sum(r["loss"] for r in rows) / n,
    }


def warnings(measured: dict[str, Any]) -> list[str]:
    """What WARNING_RULE finds in one model's measurement."""
    found = []
    train, held = measured["train"], measured["held_out"]
    if train["n"] and held["n"]:
        t, h = train["verbatim"], held["verbatim"]
        if t >= RATE_FACTOR * h and t - h >= RATE_POINTS:
            found.append(
                f"training examples are reproduced verbatim far more often than held-out ones "
                f"({t:.0%} vs {h:.0%})"
            )
    auc = measured.get("auc")
    if auc is not None and auc >= AUC_LIMIT and min(train["n"], held["n"]) >= AUC_MIN_ROWS:
        found.append(
            f"the loss tells training examples from held-out ones (membership AUC {auc:.2f})"
        )
    leaked = [c for c in measured.get("canaries", []) if c["reproduced"]]
    if leaked:
        found.append(
            f"{len(leaked)} of {len(measured['canaries'])} canaries reproduced verbatim by greedy "
            "decoding"
        )
    return found


# --------------------------------------------------------------------------------------------------
# Measuring a model


@torch.no_grad()
def token_losses(model, samples: list[Sample], pad_id: int, batch_size: int, what: str):
    """Each sample's summed loss over its target tokens, given its prompt, and the count."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sums, counts = [0.0] * len(samples), [0] * len(samples)
    order = sorted(range(len(samples)), key=lambda i: -_length(samples[i]))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    try:
        for idx in track(batches, what) if len(batches) > 1 else batches:
            width = max(_length(samples[i]) for i in idx)
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            labels = torch.full((len(idx), width), -100, dtype=torch.long)
            for row, i in enumerate(idx):
                s = samples[i]
                seq = s.prompt_ids + s.target_ids
                ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
                labels[row, len(s.prompt_ids) : len(seq)] = torch.tensor(s.target_ids)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            targets = labels[:, 1:].to(device)
            losses = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().transpose(1, 2), targets, ignore_index=-100, reduction="none"
            )
            for row, i in enumerate(idx):
                sums[i] = float(losses[row].sum())
                counts[i] = int((targets[row] != -100).sum())
    finally:
        model.train(was_training)
    return sums, counts


def _length(s: Sample) -> int:
    return len(s.prompt_ids) + len(s.target_ids)


def measure_examples(model, tokenizer, view, samples: list[Sample], options: Options, what: str):
    """Greedy continuations and continuation losses of `samples`, one result per sample."""
    if not samples:
        return []
    longest = max(len(s.target_ids) for s in samples)
    outs = generate(
        model,
        tokenizer,
        [s.prompt_ids for s in samples],
        view.stop_ids,
        Sampling(max_new_tokens=longest),
        batch_size=options.batch_size,
        description=f"Greedy continuations ({what})",
    )
    sums, counts = token_losses(
        model, samples, _pad(tokenizer), options.batch_size, f"Continuation loss ({what})"
    )
    results = []
    for s, out, total, n in zip(samples, outs, sums, counts, strict=True):
        generated = out.token_ids[: len(s.target_ids)]
        ratio = similarity(generated, s.target_ids)
        results.append(
            {
                "where": s.where,
                "target_tokens": len(s.target_ids),
                "verbatim": verbatim(generated, s.target_ids),
                "near_verbatim": ratio >= NEAR_VERBATIM_RATIO,
                "similarity": round(ratio, 4),
                "loss": total / n,
            }
        )
    return results


def _pad(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def measure_canary(model, tokenizer, view, canary: Canary, options: Options, index: int):
    """Greedy reproduction of the canary's secret from its prefix, and the secret's exposure
    among `options.candidates` random secrets of the same format."""
    prompt = view.canary_prompt(canary)
    rng = random.Random(f"{options.seed}-candidates-{index}")
    others: list[str] = []
    while len(others) < options.candidates:
        candidate = random_secret(rng)
        if candidate != canary.secret:
            others.append(candidate)
    samples = [_secret_sample(tokenizer, prompt, s) for s in (canary.secret, *others)]
    sums, _ = token_losses(
        model,
        samples,
        _pad(tokenizer),
        max(options.batch_size, 32),
        f"Canary {index + 1}: {options.candidates} candidates",
    )
    rank, bits = exposure(-sums[0], [-x for x in sums[1:]])
    out = generate(
        model,
        tokenizer,
        [samples[0].prompt_ids],
        view.stop_ids,
        Sampling(max_new_tokens=len(samples[0].target_ids) + 2),
    )[0]
    return {
        "account": canary.account,
        "prefix": canary.prefix,
        "secret": canary.secret,
        "generated": out.text,
        "reproduced": out.text.strip().startswith(canary.secret),
        "rank": rank,
        "exposure": round(bits, 3),
        "max_exposure": round(math.log2(options.candidates + 1), 3),
    }


def _secret_sample(tokenizer, prompt: str, secret: str) -> Sample:
    """The prompt's tokens and the secret's (` dddd-dddd-dddd`), tokenised as one text."""
    text = f"{prompt} {secret}"
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    cut = next(i for i, (_, b) in enumerate(offsets) if b > len(prompt))
    return Sample("canary", list(ids[:cut]), list(ids[cut:]))


def measure(model, tokenizer, view, train, held_out, canaries, options: Options, what: str):
    """One model's audit: per-example results, the summaries, AUC, loss gap, canaries."""
    train_rows = measure_examples(model, tokenizer, view, train, options, f"{what}, train")
    held_rows = measure_examples(model, tokenizer, view, held_out, options, f"{what}, held-out")
    t, h = side_summary(train_rows), side_summary(held_rows)
    gap = h["loss"] - t["loss"] if t["n"] and h["n"] else None
    result: dict[str, Any] = {
        "train": t,
        "held_out": h,
        "loss_gap": gap,
        "auc": membership_auc([r["loss"] for r in train_rows], [r["loss"] for r in held_rows]),
        "canaries": [
            measure_canary(model, tokenizer, view, c, options, k) for k, c in enumerate(canaries)
        ],
        "examples": {"train": train_rows, "held_out": held_rows},
    }
    return result


# --------------------------------------------------------------------------------------------------
# The audit


def audit(
    view,
    splits: Splits,
    model,
    tokenizer,
    options: Options,
    *,
    base_model=None,
    canaries: list[Canary] = (),
) -> dict[str, Any]:
    """The tuned model (and `base_model`, a function that loads the base, when given) measured
    on the same samples; the warnings; everything `memorization.json` holds."""
    prefix = view.default_prefix if options.prefix_tokens is None else options.prefix_tokens
    held_rows = [*splits.validation, *(splits.test or [])]
    held_source = " + ".join(
        splits.sources.get(s, s) for s in ("validation", "test") if s in splits.sources
    )
    if not splits.train:
        raise TuneforgeError("memorization audit: the run has no training rows to sample")
    source = splits.sources.get("train", "train")
    train, train_short = draw(view, splits.train, source, options.samples, options, prefix, "train")
    held, held_short = draw(view, held_rows, held_source, options.samples, options, prefix, "held")
    if not train:
        raise TuneforgeError(
            f"memorization audit: no training example is longer than --prefix-tokens {prefix}",
            hint="lower --prefix-tokens",
        )
    n = min(len(train), len(held)) if held else len(train)
    train, held = train[:n], held[:n]
    result: dict[str, Any] = {
        "settings": {
            **asdict(options),
            "prefix_tokens": prefix,
            "near_verbatim_ratio": NEAR_VERBATIM_RATIO,
            "warning_rule": WARNING_RULE,
            "held_out_source": held_source,
        },
        "sampled": {"train": len(train), "held_out": len(held)},
        "too_short": {"train": train_short, "held_out": held_short},
        "tuned": measure(model, tokenizer, view, train, held, canaries, options, "tuned"),
    }
    if base_model is not None:
        base = base_model()
        try:
            result["base"] = measure(base, tokenizer, view, train, held, canaries, options, "base")
        finally:
            del base
    result["warnings"] = warnings(result["tuned"])
    return result
