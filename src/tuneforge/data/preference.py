"""Preference data: pairwise judgements and unpaired feedback, as the model's chat renders them.

Two shapes, found from the training file's columns:

- pairwise: a prompt and two answers, `chosen` (preferred) and `rejected` — what DPO and ORPO
  learn from. The prompt is text (one user turn) or a list of chat messages; each answer is text
  or a list of messages ending in the assistant's answer. Without a prompt column, chosen and
  rejected may be whole chats sharing their beginning (the prompt is that shared beginning).
- unpaired: a prompt, one `completion` and a `label` (thumbs up or down) — what a product
  collects, and what KTO learns from.

Prompts and answers are rendered with the model's own chat template by :mod:`tuneforge.data.chat`
(the same function that training, generation and the server use), and split into prompt tokens
and answer tokens (the answer ends with the template's end-of-turn token, so the model learns to
stop there).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from tuneforge.data.chat import (
    Message,
    encode_chat,
    parse_messages,
    parse_text,
    with_system_prompt,
)
from tuneforge.errors import TuneforgeError

PAIRWISE, UNPAIRED = "pairwise", "unpaired"

# Label values accepted for unpaired feedback (case-insensitive for text).
UP = frozenset({"1", "true", "up", "thumbs_up", "thumbsup", "+1", "yes", "good", "desirable", "👍"})
DOWN = frozenset(
    {"0", "false", "down", "thumbs_down", "thumbsdown", "-1", "no", "bad", "undesirable", "👎"}
)


@dataclass(frozen=True)
class PreferenceFields:
    """Which columns hold what, resolved once from the recipe and stored in the run."""

    format: str  # pairwise | unpaired
    prompt: str = "prompt"
    chosen: str = "chosen"
    rejected: str = "rejected"
    completion: str = "completion"
    label: str = "label"
    system_prompt: str | None = None

    def to_info(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> PreferenceFields:
        return cls(**info)


@dataclass(frozen=True)
class Pair:
    prompt: list[Message]
    chosen: str
    rejected: str


@dataclass(frozen=True)
class Feedback:
    prompt: list[Message]
    completion: str
    desirable: bool


def detect_format(requested: str, columns: list[str], fields: PreferenceFields, where: str) -> str:
    """`pairwise` or `unpaired`: as configured, or (`auto`) from the columns present."""
    pairwise = {fields.chosen, fields.rejected}
    unpaired = {fields.prompt, fields.completion, fields.label}
    if requested == PAIRWISE or (requested == "auto" and pairwise <= set(columns)):
        missing = sorted(pairwise - set(columns))
        if missing:
            raise TuneforgeError(
                f"{where}: pairwise preference data needs columns {sorted(pairwise)}; missing "
                f"{missing} (columns: {columns})",
                hint="rename the columns or set data.chosen_field / data.rejected_field",
            )
        return PAIRWISE
    if requested == UNPAIRED or (requested == "auto" and unpaired <= set(columns)):
        missing = sorted(unpaired - set(columns))
        if missing:
            raise TuneforgeError(
                f"{where}: unpaired feedback needs columns {sorted(unpaired)}; missing {missing} "
                f"(columns: {columns})",
                hint="rename the columns or set data.prompt_field / completion_field / label_field",
            )
        return UNPAIRED
    raise TuneforgeError(
        f"{where}: cannot tell the preference data's shape from its columns {columns}",
        hint=f"pairwise data has {fields.prompt!r}, {fields.chosen!r}, {fields.rejected!r}; "
        f"feedback has {fields.prompt!r}, {fields.completion!r}, {fields.label!r} (thumbs up/down)",
    )


def parse_row(row: dict[str, Any], fields: PreferenceFields, where: str) -> Pair | Feedback:
    """The example a row holds; every problem raises naming `where` (file and line) and field."""
    if fields.format == PAIRWISE:
        return _pair(row, fields, where)
    prompt = prompt_messages(row, fields.prompt, where)
    completion = _answer(row, fields.completion, where)
    return Feedback(
        with_system_prompt(prompt, fields.system_prompt),
        completion,
        parse_label(row.get(fields.label), fields.label, where),
    )


def _pair(row: dict[str, Any], fields: PreferenceFields, where: str) -> Pair:
    if fields.prompt in row and row[fields.prompt] is not None:
        prompt = prompt_messages(row, fields.prompt, where)
        chosen = _answer(row, fields.chosen, where)
        rejected = _answer(row, fields.rejected, where)
    else:  # whole chats that share their beginning (TRL's "implicit prompt" format)
        whole_chosen = parse_messages(row, fields.chosen, where)
        whole_rejected = parse_messages(row, fields.rejected, where)
        shared = 0
        while (
            shared < min(len(whole_chosen), len(whole_rejected)) - 1
            and whole_chosen[shared] == whole_rejected[shared]
        ):
            shared += 1
        prompt = whole_chosen[:shared]
        if not prompt or whole_chosen[-1]["role"] != "assistant":
            raise TuneforgeError(
                f"{where}: without a '{fields.prompt}' column, '{fields.chosen}' and "
                f"'{fields.rejected}' must be chats that share their beginning and end in an "
                "assistant answer",
                hint=f"add a '{fields.prompt}' column",
            )
        chosen = _last_assistant(whole_chosen[shared:], fields.chosen, where)
        rejected = _last_assistant(whole_rejected[shared:], fields.rejected, where)
    if prompt[-1]["role"] == "assistant":
        raise TuneforgeError(f"{where}: field '{fields.prompt}': the prompt ends with an answer")
    if chosen.strip() == rejected.strip():
        raise TuneforgeError(
            f"{where}: '{fields.chosen}' and '{fields.rejected}' are the same answer, so there "
            "is no preference to learn",
            hint="fix or remove the row",
        )
    return Pair(with_system_prompt(prompt, fields.system_prompt), chosen, rejected)


def prompt_messages(row: dict[str, Any], field: str, where: str) -> list[Message]:
    if field not in row:
        raise TuneforgeError(f"{where}: missing field '{field}'")
    value = row[field]
    if isinstance(value, list) or (isinstance(value, str) and value.lstrip().startswith("[{")):
        return parse_messages(row, field, where)
    return [{"role": "user", "content": parse_text(row, field, where)}]


def _answer(row: dict[str, Any], field: str, where: str) -> str:
    """An answer given as text or as messages ending in the assistant's answer."""
    if field not in row:
        raise TuneforgeError(f"{where}: missing field '{field}'")
    value = row[field]
    if isinstance(value, list) or (isinstance(value, str) and value.lstrip().startswith("[{")):
        return _last_assistant(parse_messages(row, field, where), field, where)
    return parse_text(row, field, where)


def _last_assistant(messages: list[Message], field: str, where: str) -> str:
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        raise TuneforgeError(
            f"{where}: field '{field}': expected one assistant message as the answer",
            hint='e.g. [{"role": "assistant", "content": "..."}]',
        )
    return messages[0]["content"]


def parse_label(value: Any, field: str, where: str) -> bool:
    """Thumbs up (True) or down (False) from the spellings products use."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in UP:
            return True
        if text in DOWN:
            return False
    shown = "missing" if value is None else repr(value)
    raise TuneforgeError(
        f"{where}: field '{field}': unknown feedback label {shown}",
        hint="use true/false, 1/0, up/down or thumbs_up/thumbs_down",
    )


# --------------------------------------------------------------------------------------------------
# Tokens


@dataclass
class EncodedAnswer:
    """A prompt's tokens and an answer's tokens (ending with the end-of-turn token)."""

    prompt_ids: list[int]
    answer_ids: list[int]


def encode_answer(tokenizer, prompt: list[Message], answer: str, eot: str | None) -> EncodedAnswer:
    """Render prompt + answer with the chat template; split at the answer's first token.

    The answer's tokens are those `encode_chat` labels in the last assistant turn (through the
    end-of-turn token), so the split follows the same character offsets as sft's loss mask.
    """
    messages = [*prompt, {"role": "assistant", "content": answer}]
    enc = encode_chat(tokenizer, messages, max_length=1 << 30, eot=eot)
    labelled = [i for i, label in enumerate(enc.labels) if label != -100]
    # the last run of labelled positions is this answer (earlier assistant turns come before)
    end = labelled[-1] + 1
    start = end
    while start > 0 and enc.labels[start - 1] != -100:
        start -= 1
    return EncodedAnswer(enc.input_ids[:start], enc.input_ids[start:end])


def fit(
    prompt_ids: list[int], answers: list[list[int]], max_length: int, overlong: str
) -> tuple[list[list[int]], str]:
    """Answers cut so prompt + each answer fits `max_length`; status ok | truncated | dropped.

    A prompt that leaves no room for a single answer token drops the example whatever `overlong`.
    """
    if len(prompt_ids) + max(len(a) for a in answers) <= max_length:
        return answers, "ok"
    room = max_length - len(prompt_ids)
    if overlong == "drop" or room < 1:
        return [], "dropped"
    return [a[:room] for a in answers], "truncated"
