"""From a feedback log to preference data the `preference` task trains on.

Feedback is about an answer to a prompt: feedback given by completion id is joined to the logged
completion, feedback given as text stands for itself, and both name the same answer when the
prompt (the same messages) and the answer text are equal. Several feedback records on one answer
merge field by field, the later value winning: a later thumbs-down replaces an earlier
thumbs-up; a rating sent after an edit keeps the edit.

Each judged answer gets a label: its rating; with no rating but a `preferred` (edited) answer,
down. The preferred answer itself is an up answer for the same prompt. Two exports:

- ``kto`` (unpaired, for KTO): one row per labelled answer, ``{"prompt": [messages],
  "completion": text, "label": true|false}``; where the same answer ends up labelled twice
  (a preferred answer equal to another rated one) the later judgement wins.
- ``pairs`` (pairwise, for DPO/ORPO): per prompt, first every (preferred, original) of an edit,
  then every (up, down) combination, diagonal first so the kept pairs spread over many answers;
  ``{"prompt": [messages], "chosen": text, "rejected": text}``, deduplicated and capped per prompt
  (a prompt with 20 answers would otherwise weigh 100 times one with 2).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

from tuneforge.data.chat import ROLES
from tuneforge.deploy.feedback import RATINGS, encode_record, read_log
from tuneforge.errors import TuneforgeError, did_you_mean
from tuneforge.files import ensure_dir, write_text

KINDS = ("kto", "pairs")
MAX_PAIRS_PER_PROMPT = 4


@dataclass
class Judgement:
    """The merged feedback on one answer to one prompt."""

    prompt: list[dict[str, str]]
    completion: str
    rating: str | None = None
    preferred: str | None = None
    last: int = 0  # position of its latest feedback record in the log


@dataclass
class Collected:
    """What a log says, ready for either export."""

    judgements: list[Judgement] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)


def prompt_key(prompt: list[dict[str, str]]) -> str:
    """Same messages, same prompt (role and content; nothing else the client sent)."""
    return json.dumps([[m["role"], m["content"]] for m in prompt], ensure_ascii=False)


def collect(log: Path) -> Collected:
    """Read the log, join feedback to completions, merge feedback on the same answer."""
    contents = read_log(log)
    completions: dict[str, dict[str, Any]] = {}
    feedback: list[dict[str, Any]] = []
    for record in contents.records:
        if record["type"] == "completion" and _is_completion(record):
            completions[record["id"]] = record
        elif record["type"] == "feedback" and _is_feedback(record):
            feedback.append(record)
        else:
            contents.skipped_lines += 1
    collected = Collected()
    counts = collected.counts
    counts.update(
        completions=len(completions), feedback=len(feedback), skipped_unknown=0, skipped_unusable=0
    )
    counts["skipped_lines"] = contents.skipped_lines
    merged: dict[tuple[str, str], Judgement] = {}
    for position, record in enumerate(feedback):
        target = _target(record, completions)
        if target is None:
            counts["skipped_unknown"] += 1
            continue
        prompt, completion = target
        if not trainable(prompt):
            counts["skipped_unusable"] += 1
            continue
        judgement = merged.setdefault(
            (prompt_key(prompt), completion), Judgement(prompt, completion)
        )
        judgement.rating = record.get("rating") or judgement.rating
        judgement.preferred = record.get("preferred") or judgement.preferred
        judgement.last = position
    collected.judgements = sorted(merged.values(), key=lambda j: j.last)
    return collected


def trainable(prompt: list[dict[str, str]]) -> bool:
    """What the preference task can learn from: known roles, the prompt not ending in an answer
    (a chat the client ended with an assistant turn got a second answer the template cannot
    render as one turn)."""
    return all(m["role"] in ROLES for m in prompt) and prompt[-1]["role"] != "assistant"


def _is_completion(record: dict[str, Any]) -> bool:
    return (
        isinstance(record.get("id"), str)
        and _is_messages(record.get("prompt"))
        and isinstance(record.get("completion"), str)
    )


def _is_feedback(record: dict[str, Any]) -> bool:
    """Well-formed as the server writes it (a hand-edited log may hold anything)."""
    rating, preferred = record.get("rating"), record.get("preferred")
    if rating is not None and rating not in RATINGS:
        return False
    if preferred is not None and not (isinstance(preferred, str) and preferred.strip()):
        return False
    if rating is None and preferred is None:
        return False
    if "completion_id" in record:
        return isinstance(record["completion_id"], str)
    return _is_messages(record.get("prompt")) and isinstance(record.get("completion"), str)


def _is_messages(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
            for m in value
        )
    )


def _target(
    record: dict[str, Any], completions: dict[str, dict[str, Any]]
) -> tuple[list[dict[str, str]], str] | None:
    if "completion_id" in record:
        original = completions.get(record["completion_id"])
        return None if original is None else (original["prompt"], original["completion"])
    return record["prompt"], record["completion"]


# --------------------------------------------------------------------------------------------------
# The two shapes


def labelled_answers(judgements: list[Judgement]) -> dict[tuple[str, str], tuple[Any, str, bool]]:
    """(prompt key, answer) → (prompt, answer, up?), later judgements overriding earlier."""
    answers: dict[tuple[str, str], tuple[Any, str, bool]] = {}
    for j in judgements:
        key = prompt_key(j.prompt)
        answers[(key, j.completion)] = (j.prompt, j.completion, j.rating == "up")
        if j.preferred is not None and j.preferred.strip() != j.completion.strip():
            answers[(key, j.preferred)] = (j.prompt, j.preferred, True)
    return answers


def kto_rows(judgements: list[Judgement]) -> list[dict[str, Any]]:
    return [
        {"prompt": prompt, "completion": answer, "label": up}
        for prompt, answer, up in labelled_answers(judgements).values()
    ]


def pair_rows(
    judgements: list[Judgement], max_per_prompt: int = MAX_PAIRS_PER_PROMPT
) -> tuple[list[dict[str, Any]], int]:
    """The pairs, and how many more the per-prompt cap left out."""
    prompts: dict[str, list[dict[str, str]]] = {}
    edits: dict[str, list[tuple[str, str]]] = {}
    ups: dict[str, list[str]] = {}
    downs: dict[str, list[str]] = {}
    for j in judgements:
        key = prompt_key(j.prompt)
        prompts.setdefault(key, j.prompt)
        if j.preferred is not None:
            edits.setdefault(key, []).append((j.preferred, j.completion))
    for (key, answer), (_prompt, _answer, up) in labelled_answers(judgements).items():
        (ups if up else downs).setdefault(key, []).append(answer)
    rows: list[dict[str, Any]] = []
    capped = 0
    for key, prompt in prompts.items():
        candidates = edits.get(key, []) + _diagonal(ups.get(key, []), downs.get(key, []))
        pairs = _distinct(candidates)
        capped += max(0, len(pairs) - max_per_prompt)
        rows += [{"prompt": prompt, "chosen": c, "rejected": r} for c, r in pairs[:max_per_prompt]]
    return rows, capped


def _diagonal(ups: list[str], downs: list[str]) -> list[tuple[str, str]]:
    """Every (up, down), ordered so the first few pairs use different answers."""
    combos = product(enumerate(ups), enumerate(downs))
    ordered = sorted(combos, key=lambda c: (c[0][0] + c[1][0], c[0][0]))
    return [(u, d) for (_, u), (_, d) in ordered]


def _distinct(candidates: list[tuple[str, str]]) -> list[tuple[str, str]]:
    seen: set[tuple[str, str]] = set()
    out = []
    for chosen, rejected in candidates:
        if chosen.strip() == rejected.strip() or (chosen, rejected) in seen:
            continue
        seen.add((chosen, rejected))
        out.append((chosen, rejected))
    return out


# --------------------------------------------------------------------------------------------------
# Entry points


def feedback_stats(log: Path, max_pairs_per_prompt: int = MAX_PAIRS_PER_PROMPT) -> dict[str, int]:
    """What the log holds and what each export would make of it."""
    return _counts(collect(log), max_pairs_per_prompt)[0]


def export_feedback(
    log: Path, kind: str, max_pairs_per_prompt: int = MAX_PAIRS_PER_PROMPT
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Rows for the `preference` task (`kto` or `pairs`) and the counts behind them."""
    if kind not in KINDS:
        raise TuneforgeError(
            f"unknown export kind {kind!r}{did_you_mean(kind, KINDS)}",
            hint="kto (thumbs up/down rows, for KTO) or pairs (chosen/rejected, for DPO/ORPO)",
        )
    counts, kto, pairs = _counts(collect(log), max_pairs_per_prompt)
    rows = kto if kind == "kto" else pairs
    return rows, {**counts, "rows": len(rows)}


def _counts(
    collected: Collected, max_pairs_per_prompt: int
) -> tuple[dict[str, int], list[dict[str, Any]], list[dict[str, Any]]]:
    judgements = collected.judgements
    kto = kto_rows(judgements)
    pairs, capped = pair_rows(judgements, max_pairs_per_prompt)
    counts = {
        "completions": collected.counts["completions"],
        "feedback": collected.counts["feedback"],
        "rated_up": sum(j.rating == "up" for j in judgements),
        "rated_down": sum(j.rating == "down" for j in judgements),
        "edited": sum(j.preferred is not None for j in judgements),
        "prompts": len({prompt_key(j.prompt) for j in judgements}),
        "kto_rows": len(kto),
        "pairs": len(pairs),
        "pairs_capped": capped,
        "skipped_lines": collected.counts["skipped_lines"],
        "skipped_unknown": collected.counts["skipped_unknown"],
        "skipped_unusable": collected.counts["skipped_unusable"],
    }
    return counts, kto, pairs


def write_rows(path: Path, rows: list[dict[str, Any]], log: Path | None = None) -> None:
    """JSON Lines, written whole or not at all (a training run never reads half an export).

    Refuses to replace `log` itself: the export would destroy the only copy of the feedback.
    """
    path = Path(path)
    if path.is_dir():
        raise TuneforgeError(
            f"--output {path} is a folder", hint=f"give a file name, e.g. {path / 'prefs.jsonl'}"
        )
    if log is not None and path.resolve() == Path(log).resolve():
        raise TuneforgeError(
            f"--output {path} is the feedback log itself", hint="write the export to another file"
        )
    ensure_dir(path.parent, "--output folder")
    write_text(path, b"".join(encode_record(r) for r in rows).decode())
