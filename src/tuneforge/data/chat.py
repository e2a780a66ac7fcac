"""Chats: data rows to {role, content} conversations, rendered with the model's own chat template.

One rendering function (:func:`render`) serves training, evaluation, `generate`, `chat`, `predict`
and the server, so a tuned model is always prompted exactly as it was trained.

Which tokens an assistant turn owns is found by rendering the chat incrementally: the prefix that
ends in the assistant header (`add_generation_prompt=True`) versus the prefix that includes the
turn. The difference is a character span, mapped to tokens through the tokenizer's offsets, so a
BPE merge across the boundary cannot shift the mask. This works for every template that renders a
longer chat as an extension of a shorter one (ChatML, Llama 3, Gemma, Mistral, ...) without needing
`{% generation %}` markers, which few templates have.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from tuneforge.errors import TuneforgeError

ROLES = ("system", "user", "assistant")
FORMATS = ("messages", "prompt_completion", "alpaca")

# For tokenizers without a chat template (plain base models): simple headers, EOS after answers.
FALLBACK_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '### ' + message['role'] | capitalize + ':\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\n\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Assistant:\n' }}{% endif %}"
)

Message = dict[str, str]


@dataclass(frozen=True)
class ChatFields:
    """Which columns hold the chat, resolved once from the recipe and stored in the run."""

    format: str  # messages | prompt_completion | alpaca
    messages: str = "messages"
    prompt: str = "prompt"
    completion: str = "completion"
    instruction: str = "instruction"
    input: str = "input"
    output: str = "output"
    system_prompt: str | None = None

    def to_info(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> ChatFields:
        return cls(**info)

    def answer_field(self) -> str:
        return {
            "messages": self.messages,
            "prompt_completion": self.completion,
            "alpaca": self.output,
        }[self.format]


def detect_format(requested: str, columns: list[str], fields: dict[str, str], where: str) -> str:
    """The data format: as configured, or (`auto`) the first one whose columns are present."""
    if requested != "auto":
        return requested
    if fields["messages"] in columns:
        return "messages"
    if fields["prompt"] in columns and fields["completion"] in columns:
        return "prompt_completion"
    if fields["instruction"] in columns and fields["output"] in columns:
        return "alpaca"
    raise TuneforgeError(
        f"{where}: cannot tell the sft data format from the columns {columns}",
        hint=f"provide a '{fields['messages']}' column (chat), '{fields['prompt']}' + "
        f"'{fields['completion']}', or '{fields['instruction']}' + '{fields['output']}'; "
        "or name your "
        "columns in the recipe (data.messages_field, data.prompt_field, ...)",
    )


def input_format(columns: list[str], fields: ChatFields, where: str) -> str:
    """The format of a file of inputs to answer (no answer column needed): the run's, if present."""
    key = {
        "messages": fields.messages,
        "prompt_completion": fields.prompt,
        "alpaca": fields.instruction,
    }
    if key[fields.format] in columns:
        return fields.format
    for fmt, column in key.items():
        if column in columns:
            return fmt
    raise TuneforgeError(
        f"{where}: no column to answer: expected '{fields.messages}', '{fields.prompt}' or "
        f"'{fields.instruction}', found {columns}"
    )


# --------------------------------------------------------------------------------------------------
# Rows to conversations (with errors naming file, line and field)


def conversation(
    row: dict[str, Any], fields: ChatFields, where: str, *, need_answer: bool = True
) -> list[Message]:
    """The chat a row describes; `need_answer=False` for inputs to predict (no answer given)."""
    if fields.format == "messages":
        messages = parse_messages(row, fields.messages, where)
        if need_answer and not any(m["role"] == "assistant" for m in messages):
            raise TuneforgeError(
                f"{where}: field '{fields.messages}': no assistant message, so nothing to learn",
                hint='each chat needs at least one {"role": "assistant", ...} turn',
            )
        return with_system_prompt(messages, fields.system_prompt)
    if fields.format == "prompt_completion":
        user = parse_text(row, fields.prompt, where)
        answer = parse_text(row, fields.completion, where) if need_answer else None
    else:
        user = parse_text(row, fields.instruction, where)
        extra = row.get(fields.input)
        if extra is not None and not isinstance(extra, str):
            raise TuneforgeError(
                f"{where}: field '{fields.input}' must be text, got {type(extra).__name__}"
            )
        if extra and extra.strip():
            user = f"{user}\n\n{extra}"
        answer = parse_text(row, fields.output, where) if need_answer else None
    messages = [{"role": "user", "content": user}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return with_system_prompt(messages, fields.system_prompt)


def parse_text(row: dict[str, Any], field: str, where: str) -> str:
    if field not in row:
        raise TuneforgeError(f"{where}: missing field '{field}'")
    value = row[field]
    if not isinstance(value, str) or not value.strip():
        got = (
            "empty"
            if value is None or isinstance(value, str)
            else f"not text ({type(value).__name__})"
        )
        raise TuneforgeError(
            f"{where}: field '{field}' is {got}", hint="fill it in or remove the row"
        )
    return value


def parse_messages(row: dict[str, Any], field: str, where: str) -> list[Message]:
    if field not in row:
        raise TuneforgeError(f"{where}: missing field '{field}'")
    value = row[field]
    if isinstance(value, str):  # CSV cells hold the list as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = None
    shape = 'a list of {"role": ..., "content": ...} objects'
    if not isinstance(value, list) or not value:
        raise TuneforgeError(
            f"{where}: field '{field}' must be {shape}", hint=f"got {_short(row[field])}"
        )
    out: list[Message] = []
    for i, message in enumerate(value, start=1):
        at = f"{where}: field '{field}' message {i}"
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise TuneforgeError(
                f'{at}: expected {{"role": ..., "content": ...}}, got {_short(message)}'
            )
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise TuneforgeError(
                f"{at}: unknown role {role!r}", hint=f"roles are {', '.join(ROLES)}"
            )
        if not isinstance(content, str) or not content.strip():
            raise TuneforgeError(
                f"{at} ({role}): empty content", hint="fill it in or remove the message"
            )
        out.append({"role": role, "content": content})
    return out


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def prompt_and_reference(messages: list[Message]) -> tuple[list[Message], str]:
    """The chat up to the last assistant turn (the prompt) and that turn's text (the reference)."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last], messages[last]["content"]


def with_system_prompt(messages: list[Message], system: str | None) -> list[Message]:
    """The chat with the run's system prompt first, unless it carries its own system message.

    The one place the recipe's `sft.system_prompt` enters a chat: training examples (every
    format; chats without their own system message get it too), `generate`, `chat`, `predict` and the server all call it, so a
    model is prompted at inference exactly as it was trained.
    """
    if not system or any(m["role"] == "system" for m in messages):
        return list(messages)
    return [{"role": "system", "content": system}, *messages]


def without_answer(messages: list[Message]) -> list[Message]:
    """A chat to answer: trailing assistant turns (a reference, if any) are removed."""
    while messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    return messages


# --------------------------------------------------------------------------------------------------
# Rendering and tokenising


def render(tokenizer, messages: list[Message], *, add_generation_prompt: bool = False) -> str:
    """The chat as the model sees it: the tokenizer's own template (or a plain fallback).

    A template without a system role (Gemma 2's, Mistral v0.1's raise on one) gets the system
    message folded into the first user turn, as Gemma 3's own template does itself."""
    template = tokenizer.chat_template or FALLBACK_TEMPLATE
    if messages and messages[0]["role"] == "system" and not accepts_system_role(tokenizer):
        messages = fold_system_message(messages)
    try:
        return _apply(tokenizer, messages, template, add_generation_prompt)
    except Exception as e:  # jinja's raise_exception() in templates that refuse a role order
        raise TuneforgeError(f"the model's chat template refused this chat: {e}") from None


def _apply(tokenizer, messages: list[Message], template: str, add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
        chat_template=template,
    )


_SYSTEM_ROLE: dict[str, bool] = {}  # template text -> whether it renders a system message


def accepts_system_role(tokenizer) -> bool:
    """Whether the chat template renders a system message (raising or dropping it: no)."""
    template = tokenizer.chat_template or FALLBACK_TEMPLATE
    if template not in _SYSTEM_ROLE:
        probe = [{"role": "system", "content": "SYSTEM-PROBE"}, {"role": "user", "content": "Hi"}]
        try:
            _SYSTEM_ROLE[template] = "SYSTEM-PROBE" in _apply(tokenizer, probe, template, True)
        except Exception:  # raise_exception('System role not supported'), or any other refusal
            _SYSTEM_ROLE[template] = False
    return _SYSTEM_ROLE[template]


def fold_system_message(messages: list[Message]) -> list[Message]:
    """The leading system message put at the start of the first user turn, a blank line between
    (Gemma 3's template does exactly this); without a user turn it becomes one."""
    system, rest = messages[0]["content"], list(messages[1:])
    for i, message in enumerate(rest):
        if message["role"] == "user":
            rest[i] = {**message, "content": f"{system}\n\n{message['content']}"}
            return rest
    return [{"role": "user", "content": system}, *rest]


def encode_prompt(tokenizer, messages: list[Message]) -> list[int]:
    """Token ids of a chat ending in the assistant header: what generation continues."""
    return tokenizer(
        render(tokenizer, messages, add_generation_prompt=True), add_special_tokens=False
    )["input_ids"]


def end_of_turn(tokenizer) -> str | None:
    """The special token the template puts after an assistant answer (e.g. <|im_end|>), if any."""
    probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "PROBE-ANSWER"}]
    text = render(tokenizer, probe)
    tail = text[text.rfind("PROBE-ANSWER") + len("PROBE-ANSWER") :]
    specials = set(tokenizer.all_special_tokens) | {
        t.content for t in tokenizer.added_tokens_decoder.values() if t.special
    }
    found = [(tail.find(s), s) for s in specials if s and s in tail]
    return min(found)[1] if found else None


def stop_token_ids(tokenizer, eot: str | None) -> list[int]:
    """Generation stops at EOS or at the template's end-of-turn token."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if eot is not None:
        ids.append(tokenizer.convert_tokens_to_ids(eot))
    return sorted(set(ids))


def assistant_spans(
    tokenizer, messages: list[Message], text: str, eot: str | None
) -> list[tuple[int, int, bool]]:
    """(start, end, has_eot) character spans of each assistant answer in `text`.

    The span runs from the end of the assistant header to the end of the end-of-turn token, so the
    model learns to stop; template text after it (ChatML's newline) is not trained.
    """
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        head = render(tokenizer, messages[:i], add_generation_prompt=True)
        through = render(tokenizer, messages[: i + 1])
        if not (through.startswith(head) and text.startswith(through)):
            raise TuneforgeError(
                "the model's chat template does not render a chat as an extension of its "
                "beginning, "
                "so assistant turns cannot be located",
                hint="set sft.train_on: all, or use a model whose template is incremental",
            )
        start, end = len(head), len(through)
        region = text[start:end]
        cut = region.rfind(eot) if eot else -1
        if cut >= 0:
            spans.append((start, start + cut + len(eot), True))
        else:
            spans.append((start, start + len(region.rstrip()), False))
    return spans


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    n_tokens: int  # before truncation
    status: str  # ok | truncated | dropped


def encode_chat(
    tokenizer,
    messages: list[Message],
    *,
    max_length: int,
    train_on: str = "assistant",
    overlong: str = "truncate",
    eot: str | None = None,
) -> Encoded:
    """Token ids and labels (-100 where no loss) of one chat, cut or dropped past `max_length`."""
    text = render(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    if train_on == "all":
        labels = list(ids)
    else:
        labels = [-100] * len(ids)
        for start, end, has_eot in reversed(assistant_spans(tokenizer, messages, text, eot)):
            inside = [i for i, (a, b) in enumerate(offsets) if start <= a < end and b > a]
            for i in inside:
                labels[i] = ids[i]
            if not has_eot and inside:  # no end-of-turn token in the template: teach EOS instead
                ids.insert(inside[-1] + 1, tokenizer.eos_token_id)
                labels.insert(inside[-1] + 1, tokenizer.eos_token_id)
    n_tokens = len(ids)
    if n_tokens <= max_length:
        return Encoded(ids, labels, n_tokens, "ok")
    if overlong == "drop":
        return Encoded([], [], n_tokens, "dropped")
    ids, labels = ids[:max_length], labels[:max_length]
    if all(label == -100 for label in labels):
        return Encoded([], [], n_tokens, "dropped")
    return Encoded(ids, labels, n_tokens, "truncated")


def trained_segments(tokenizer, encoded: Encoded) -> list[tuple[str, bool]]:
    """(text, trained) pieces of an encoded chat, for `data preview`.

    Runs of tokens are decoded together so multi-byte characters split across tokens stay whole.
    """
    runs: list[tuple[list[int], bool]] = []
    for token_id, label in zip(encoded.input_ids, encoded.labels, strict=True):
        trained = label != -100
        if runs and runs[-1][1] == trained:
            runs[-1][0].append(token_id)
        else:
            runs.append(([token_id], trained))
    return [(tokenizer.decode(ids, skip_special_tokens=False), trained) for ids, trained in runs]
