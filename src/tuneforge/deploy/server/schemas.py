"""The JSON bodies of the OpenAI-compatible API: requests, validated by pydantic (strict types,
OpenAI ranges), and the answers, which the OpenAPI document describes.

Fields OpenAI clients commonly send but this server cannot honour are declared so that a
non-default value is refused with a clear message instead of being silently ignored; fields not
declared at all are ignored, as OpenAI-compatible servers usually do. Where a validator narrows a
field, `WithJsonSchema` states the same rule in the OpenAPI document, so that a request valid by
the document is one the server accepts (tests/e2e/test_serve_contract.py checks it).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, field_validator

from tuneforge.deploy.limits import FeedbackLimits

MAX_STOP = 4  # OpenAI's limit on stop sequences
SEED = (-(2**53), 2**53)  # exact in every JSON parser (doubles), and torch.manual_seed takes it


def _whole(value: object) -> object:
    """8.0 is the integer 8 in JSON (and JSON Schema); strict mode would refuse it."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


WHOLE = BeforeValidator(_whole)  # outside the bounds, so they stay in the JSON Schema
Integer = Annotated[int, WHOLE]
Count = Annotated[Annotated[int, Field(ge=1)], WHOLE]
Seed = Annotated[Annotated[int, Field(ge=SEED[0], le=SEED[1])], WHOLE]


def _only(value: object, kind: str) -> WithJsonSchema:
    """The document's view of a field whose validator accepts one value (or null)."""
    return WithJsonSchema({"anyOf": [{"type": kind, "const": value}, {"type": "null"}]})


NON_BLANK = {"type": "string", "pattern": r"\S"}  # str.strip() leaves something
STOP = WithJsonSchema(
    {
        "anyOf": [
            {"type": "string", "minLength": 1},
            {
                "type": "array",
                "items": {"type": "string", "minLength": 1},
                "maxItems": MAX_STOP,
            },
            {"type": "null"},
        ]
    }
)
NO_PENALTY = WithJsonSchema({"type": "number", "minimum": 0, "maximum": 0})


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    """What chat and text completions share."""

    model: str
    max_tokens: Count | None = None
    max_completion_tokens: Count | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    stop: Annotated[str | list[str] | None, STOP] = Field(
        None, validate_default=True
    )  # always a list after validation
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: Seed | None = None
    logit_bias: (
        Annotated[
            dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]],
            Field(json_schema_extra={"propertyNames": {"pattern": "^[0-9]+$"}}),
        ]
        | None
    ) = None
    n: Annotated[Integer, WithJsonSchema({"type": "integer", "const": 1})] = 1
    presence_penalty: Annotated[float, NO_PENALTY] = 0.0
    frequency_penalty: Annotated[float, NO_PENALTY] = 0.0
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("a stop sequence must not be empty")
        return stops

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int) -> int:
        if value != 1:
            raise ValueError("only n=1 is supported: send one request per answer")
        return value

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, value: float) -> float:
        if value != 0.0:
            raise ValueError("presence and frequency penalties are not supported; leave them at 0")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key in value or {}:
            if not key.isdigit():
                raise ValueError(f"keys are token ids (digits), got {key!r}")
        return value

    @property
    def requested_tokens(self) -> int | None:
        return (
            self.max_completion_tokens
            if self.max_completion_tokens is not None
            else self.max_tokens
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    tools: Annotated[
        list | None,
        WithJsonSchema({"anyOf": [{"type": "array", "maxItems": 0}, {"type": "null"}]}),
    ] = None
    logprobs: Annotated[bool | None, _only(False, "boolean")] = None

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, value: list | None) -> None:
        if value:
            raise ValueError("tools are not supported by this server")

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: bool | None) -> None:
        if value:
            raise ValueError("logprobs are not supported by this server")


class CompletionRequest(_Sampling):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    echo: bool = False
    logprobs: Annotated[int | None, WithJsonSchema({"type": "null"})] = None
    suffix: Annotated[
        str | None,
        WithJsonSchema({"anyOf": [{"type": "string", "maxLength": 0}, {"type": "null"}]}),
    ] = None
    best_of: Annotated[Integer | None, _only(1, "integer")] = None

    @field_validator("logprobs", "suffix")
    @classmethod
    def _unsupported(cls, value, info):
        if value not in (None, ""):
            raise ValueError(f"{info.field_name} is not supported by this server")
        return value

    @field_validator("best_of")
    @classmethod
    def _best_of_one(cls, value: int | None) -> int | None:
        if value not in (None, 1):
            raise ValueError("only best_of=1 is supported")
        return value

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class ClassifyRequest(_Body):
    model: str | None = None
    input: Annotated[
        str | Annotated[list[str], Field(min_length=1)],
        WithJsonSchema(
            {"anyOf": [NON_BLANK, {"type": "array", "items": NON_BLANK, "minItems": 1}]}
        ),
    ]

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


FEEDBACK_LIMITS = FeedbackLimits()
# The server bounds a prompt's messages together (count and characters); the document states a
# stricter per-message form of the same bound, so a request it allows is always accepted.
FEEDBACK_DOC_MESSAGES = 16
_FEEDBACK_MESSAGE = {
    "type": "object",
    "properties": {
        "role": {"enum": ["system", "user", "assistant"]},
        "content": {
            **NON_BLANK,
            "maxLength": FEEDBACK_LIMITS.max_prompt_chars // FEEDBACK_DOC_MESSAGES,
        },
    },
    "required": ["role", "content"],
}


def _text(limit: int, blank_ok: bool = False) -> WithJsonSchema:
    """A string field that is left out rather than null (the document's view of `None`)."""
    return WithJsonSchema({"type": "string", "maxLength": limit} | ({} if blank_ok else NON_BLANK))


class FeedbackMessage(_Body):
    role: Literal["system", "user", "assistant"]
    content: str


class FeedbackRequest(_Body):
    """What a user said of an answer: about `completion_id` (the `id` of a chat completion this
    server returned) or about `prompt` + `completion` given as text; with a `rating`, a
    `preferred` answer, or both; and an optional `comment`."""

    model_config = ConfigDict(
        strict=True,
        extra="ignore",
        json_schema_extra={
            "oneOf": [
                {
                    "required": ["completion_id"],
                    "not": {"anyOf": [{"required": ["prompt"]}, {"required": ["completion"]}]},
                },
                {"required": ["prompt", "completion"], "not": {"required": ["completion_id"]}},
            ],
            "anyOf": [{"required": ["rating"]}, {"required": ["preferred"]}],
        },
    )

    completion_id: Annotated[str | None, _text(FEEDBACK_LIMITS.max_id_chars)] = None
    prompt: Annotated[
        str | list[FeedbackMessage] | None,
        WithJsonSchema(
            {
                "anyOf": [
                    {**NON_BLANK, "maxLength": FEEDBACK_LIMITS.max_answer_chars},
                    {
                        "type": "array",
                        "items": _FEEDBACK_MESSAGE,
                        "minItems": 1,
                        "maxItems": FEEDBACK_DOC_MESSAGES,
                    },
                ]
            }
        ),
    ] = None
    completion: Annotated[str | None, _text(FEEDBACK_LIMITS.max_answer_chars)] = None
    rating: Annotated[Literal["up", "down"] | None, WithJsonSchema({"enum": ["up", "down"]})] = None
    preferred: Annotated[str | None, _text(FEEDBACK_LIMITS.max_answer_chars)] = None
    comment: Annotated[str | None, _text(FEEDBACK_LIMITS.max_comment_chars, blank_ok=True)] = None


# ------------------------------------------------------------------------------------------------
# Answers


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None
    finish_reason: Literal["stop", "length"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class TextChoice(BaseModel):
    text: str
    index: int
    logprobs: None
    finish_reason: Literal["stop", "length"]


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage


STREAM = {
    "text/event-stream": {
        "schema": {  # Open API 3.1: the schema of one event
            "type": "object",
            "properties": {
                "event": {"type": "string"},
                "data": {
                    "type": "string",
                    "description": "an OpenAI chunk object as JSON; the last event: [DONE]",
                },
            },
            "required": ["data"],
        },
        "description": "with `stream: true`: server-sent events ending with `data: [DONE]`",
    }
}


class Classification(BaseModel):
    object: Literal["classification"]
    index: int
    label: str
    probabilities: dict[str, float]


class ClassificationList(BaseModel):
    object: Literal["list"]
    model: str
    data: list[Classification]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class FeedbackReceipt(BaseModel):
    id: str
    object: Literal["feedback"]
    created: str  # ISO-8601, as in the log
    model: str
    completion_id: str | None
