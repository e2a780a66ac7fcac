"""What one request to `tuneforge serve` may ask for.

Kept apart from the server (no FastAPI or torch import) so the CLI can show these defaults in
`tuneforge serve --help` without loading the server.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Past these a request gets a 4xx (or a 503 when the queue is full), never the server's
    memory or time."""

    max_body_bytes: int = 1_000_000
    """Largest request body, in bytes (413 past it)."""
    max_texts: int = 64
    """Texts in one /v1/classify call (400 past it)."""
    max_prompt_tokens: int | None = None
    """Longest prompt in tokens, after the chat template; None: the model's context length."""
    max_tokens: int = 2048
    """Largest `max_tokens` a request may ask for (400 past it)."""
    default_max_tokens: int = 256
    """Tokens generated when a request gives no `max_tokens` (capped by `max_tokens` and by the
    context left after the prompt)."""
    max_waiting: int = 64
    """Generation requests that may wait for a batch (not yet decoding); 503 past it."""
    generation_batch: int = 8
    """Generation requests decoded together in one batch (1: one at a time, as before). On a
    CPU a decoding step for 8 rows costs little more than for one, so throughput grows with the
    clients up to about this many; each request keeps its own settings, stops and stream."""
    max_batch: int | None = None
    """Classify texts the micro-batcher gathers into one call (a single request's texts are never
    split); None: the run's evaluation batch size, so one call is one forward pass."""
    batch_wait: float = 0.005
    """Seconds the classify micro-batcher waits for more requests to share a forward pass."""
    generation_wait: float = 0.05
    """Seconds a free model waits for more generation requests to join a batch. Longer than
    classify's: the client of the last answer of a batch sends its next request some
    milliseconds after the batch ends, and missing it costs a whole extra batch, while 50 ms is
    little beside a generation's seconds."""


@dataclass(frozen=True)
class FeedbackLimits:
    """Bounds on one `POST /v1/feedback` record, so the feedback log (kept for good, re-read by
    every export) grows by kilobytes per judgement, never by whatever a client sends."""

    max_id_chars: int = 128
    """Longest `completion_id` (ours are `chatcmpl-` + 32 hex digits)."""
    max_comment_chars: int = 2_000
    """Longest free-text `comment`."""
    max_answer_chars: int = 32_000
    """Longest `preferred` answer, and longest `completion` given as text."""
    max_prompt_chars: int = 64_000
    """Longest prompt given as text: all its messages' contents together."""
    max_messages: int = 256
    """Most messages in a prompt given as text."""
