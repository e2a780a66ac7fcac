"""The loaded run behind the server: prompts, generation in a worker thread, classification.

Prompts are built with the run's own rendering (data/chat.py: the chat template the run was
trained with, its system prompt and end-of-turn token) and answered by the one decoding loop in
generation.py, so the server answers exactly as `tuneforge chat`/`generate` do. Concurrent
requests are decoded together (scheduler.py queues and groups them, rows.py decodes a group with
each request's own settings) in one worker thread, so the event loop keeps answering; a batch of
one goes through generation.py exactly as before.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformers import AsyncTextIteratorStreamer, StoppingCriteria, StoppingCriteriaList

from tuneforge.data.chat import (
    Message,
    encode_prompt,
    end_of_turn,
    stop_token_ids,
    with_system_prompt,
)
from tuneforge.deploy.feedback import FeedbackLog
from tuneforge.deploy.limits import Limits
from tuneforge.deploy.server.rows import Row, generate_rows
from tuneforge.deploy.server.scheduler import GenerationJob, GenerationQueue
from tuneforge.generation import Generation, Sampling, generate
from tuneforge.runs.run import Run

log = logging.getLogger("tuneforge.serve")

GREEDY_BELOW = 1e-5  # temperatures below it decode greedily


class RequestError(Exception):
    """A request the server refuses: becomes an OpenAI-shaped error with this status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = (
            status,
            message,
            param,
            code,
            type,
        )


@dataclass(frozen=True)
class Prompt:
    """Token ids to continue, the ids that end the answer, and the request field they came from."""

    ids: list[int]
    stop_ids: list[int]
    param: str  # messages | prompt


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int
    temperature: float
    top_p: float
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)

    @property
    def sampling(self) -> Sampling:
        # top_p 0 keeps only the likeliest token; dividing logits by a temperature this small
        # overflows to inf (then NaN probabilities), and its sampling is greedy anyway (as vLLM)
        greedy = self.temperature < GREEDY_BELOW or self.top_p == 0
        return Sampling(
            max_new_tokens=self.max_tokens,
            temperature=0.0 if greedy else self.temperature,
            top_p=self.top_p,
        )


class _Cancelled(StoppingCriteria):
    """Stops a generation once `cancel` is set (the client went away)."""

    def __init__(self, cancel: threading.Event | None) -> None:
        self.cancel = cancel

    def __call__(self, input_ids, scores, **kwargs):
        stop = self.cancel is not None and self.cancel.is_set()
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class ModelService:
    """One run, loaded once (in the background: the server answers probes meanwhile);
    concurrent generation requests decoded in batches, classification batched."""

    def __init__(self, run: Run, name: str, limits: Limits) -> None:
        self.run = run
        self.name = name
        self.limits = limits
        self.task = run.meta["task"]
        self.generative = self.task != "classification"
        self.state: Literal["loading", "ready", "failed", "stopping"] = "loading"
        self.failure: str | None = None
        self.queue = GenerationQueue(
            self._decode,
            max_batch=limits.generation_batch,
            wait=limits.generation_wait,
            on_closed=lambda: RequestError(
                503, "the server is shutting down", code="model_stopping", type="server_error"
            ),
        )
        self.generations = 0
        self.feedback: FeedbackLog | None = None  # set by the app for generative runs

    async def record_completion(self, completion_id: str, messages, text: str) -> None:
        """Log an answer the server returns, so feedback can name it by id; a log that cannot be
        written is reported in the server's log and never fails the answer itself."""
        if self.feedback is None:
            return
        try:
            await asyncio.to_thread(self.feedback.record_completion, completion_id, messages, text)
        except Exception:  # noqa: BLE001 - the answer is sent either way
            log.exception("could not record the completion in the feedback log")

    def load(self) -> None:
        """Loads the weights and tokenizer (slow: seconds to minutes); then the service is ready."""
        self.model = self.run.model
        self.tokenizer = self.run.tokenizer
        info = self.run.meta["info"]
        if self.generative:
            eot = info["end_of_turn"] if "end_of_turn" in info else end_of_turn(self.tokenizer)
            self.chat_stop_ids = stop_token_ids(self.tokenizer, eot)
            # sft, preference: a completion prompt is one user turn
            self.chat_prompts = "chat" in info or "preference" in info
            eos = self.tokenizer.eos_token_id
            plain = [eos] if eos is not None else self.chat_stop_ids
            self.text_stop_ids = self.chat_stop_ids if self.chat_prompts else plain
        self.context = int(getattr(self.model.config, "max_position_embeddings", 0) or 4096)
        limit = self.limits.max_prompt_tokens or self.context
        self.max_prompt_tokens = min(limit, self.context - 1)
        self.vocab = len(self.tokenizer)
        if self.state == "loading":
            self.state = "ready"

    def fail(self, error: BaseException) -> None:
        self.state = "failed"
        self.failure = f"{type(error).__name__}: {error}"

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def require_ready(self) -> None:
        """Refuse (503) while the model is not loaded or the server is stopping."""
        if self.ready:
            return
        message = {
            "loading": "the model is still loading; retry in a moment",
            "failed": f"the model failed to load ({self.failure}); see the server's log",
            "stopping": "the server is shutting down",
        }[self.state]
        raise RequestError(503, message, code=f"model_{self.state}", type="server_error")

    @property
    def labels(self) -> list[str] | None:
        return self.run.labels

    def check_model(self, model: str | None) -> None:
        """A request's `model` must be this server's (or absent)."""
        if model is not None and model != self.name:
            raise RequestError(
                404,
                f"the model '{model}' does not exist; this server serves '{self.name}'",
                param="model",
                code="model_not_found",
            )

    def require_generative(self, endpoint: str) -> None:
        if not self.generative:
            raise RequestError(
                400,
                f"{endpoint} needs a generative (sft, preference or pretrain) run; "
                f"'{self.name}' is a "
                "classification run: use POST /v1/classify",
                code="unsupported_task",
            )

    @property
    def busy(self) -> bool:
        """A generation holds the model."""
        return self.queue.running > 0

    @property
    def waiting(self) -> int:
        """Generation requests waiting for a batch."""
        return self.queue.waiting

    def close(self) -> None:
        self.queue.close()

    # ---------------------------------------------------------------- prompts

    def chat_prompt(self, messages: list[Message]) -> Prompt:
        """A chat ending in the assistant header, with the run's system prompt (as `Run.chat`);
        the answer ends at EOS or the template's end-of-turn token."""
        messages = with_system_prompt(messages, self.run.task.system_prompt(self.run.recipe))
        return Prompt(encode_prompt(self.tokenizer, messages), self.chat_stop_ids, "messages")

    def completion_prompt(self, text: str) -> Prompt:
        """As `Run.generate`: an sft run answers the text as one user turn; a pretrain run
        continues it as plain text, as its corpus was trained, until EOS."""
        if self.chat_prompts:
            ids = self.chat_prompt([{"role": "user", "content": text}]).ids
        else:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return Prompt(ids, self.text_stop_ids, "prompt")

    def params(
        self,
        prompt: Prompt,
        requested: int | None,
        temperature: float,
        top_p: float,
        stop: list[str],
        seed: int | None,
        logit_bias: dict[str, float] | None,
    ) -> GenerationParams:
        """Checks a request's numbers against the limits. `max_tokens` is an upper bound: past the
        room the prompt leaves in the context, generation ends there (finish_reason "length"),
        so every `max_tokens` the OpenAPI document allows is accepted."""
        n_prompt = len(prompt.ids)
        if n_prompt == 0:
            raise RequestError(400, "the prompt is empty", param=prompt.param, code="invalid_value")
        if n_prompt > self.max_prompt_tokens:
            raise RequestError(
                400,
                f"the prompt is {n_prompt} tokens; this server accepts at most "
                f"{self.max_prompt_tokens}. Shorten the prompt or the conversation.",
                param=prompt.param,
                code="context_length_exceeded",
            )
        if requested is not None and requested > self.limits.max_tokens:
            raise RequestError(
                400,
                f"max_tokens is {requested}; this server allows at most {self.limits.max_tokens}",
                param="max_tokens",
                code="invalid_value",
            )
        bias = {}
        for key, value in (logit_bias or {}).items():
            token = int(key)
            if token >= self.vocab:
                raise RequestError(
                    400,
                    f"logit_bias: token id {token} is outside the vocabulary (0..{self.vocab - 1})",
                    param="logit_bias",
                    code="invalid_value",
                )
            bias[token] = value
        default = min(self.limits.default_max_tokens, self.limits.max_tokens)
        max_tokens = min(requested if requested is not None else default, self.context - n_prompt)
        return GenerationParams(max_tokens, temperature, top_p, stop, seed, bias)

    # ---------------------------------------------------------------- generation

    def _generate(
        self,
        prompt: Prompt,
        params: GenerationParams,
        streamer=None,
        cancel: threading.Event | None = None,
    ) -> Generation:
        """Runs in the generation thread."""
        kwargs: dict[str, Any] = {"stopping_criteria": StoppingCriteriaList([_Cancelled(cancel)])}
        if streamer is not None:
            kwargs["streamer"] = streamer
        if params.logit_bias:
            kwargs["sequence_bias"] = {(t,): b for t, b in params.logit_bias.items()}
        if params.seed is not None:
            torch.manual_seed(params.seed)
        try:
            return generate(
                self.model,
                self.tokenizer,
                [prompt.ids],
                prompt.stop_ids,
                params.sampling,
                stop_strings=params.stop,
                **kwargs,
            )[0]
        finally:
            self.generations += 1
            if streamer is not None:  # also after an error, so the consumer's loop always ends
                streamer.on_finalized_text("", stream_end=True)

    def _decode(self, jobs: list[GenerationJob]) -> None:
        """Runs in the generation thread: one request through generation.py as `tuneforge chat`
        does, several together through rows.py. Each job's future gets its answer or the error."""
        if len(jobs) == 1:
            job = jobs[0]
            try:
                job.resolve(self._generate(job.prompt, job.params, job.streamer, job.cancel))
            except Exception as e:  # noqa: BLE001 - answered to the request, not raised here
                job.fail(e)
            return
        rows = [self._row(job) for job in jobs]
        try:
            generate_rows(self.model, self.tokenizer, rows, jobs[0].prompt.stop_ids)
        except Exception as e:  # noqa: BLE001 - the batch's requests are answered with it
            log.exception("batched generation failed")
            for job in jobs:
                job.fail(e)
        finally:
            self.generations += len(jobs)
            for job in jobs:  # also after an error, so every consumer's loop ends
                if job.streamer is not None:
                    job.streamer.on_finalized_text("", stream_end=True)

    def _row(self, job: GenerationJob) -> Row:
        """A request as a row of a batch: its settings, its streamer fed token by token, its
        answer handed back when the row ends (the others decode on)."""
        params, streamer = job.params, job.streamer
        on_token = None
        if streamer is not None:
            streamer.put(torch.tensor([job.prompt.ids]))  # skipped (skip_prompt), as in generate

            def on_token(token: int) -> None:
                streamer.put(torch.tensor([token]))

        def on_done(generation: Generation) -> None:
            if streamer is not None:
                streamer.end()  # the text still held, then the end of the stream
            job.resolve(generation)

        sampling = params.sampling
        return Row(
            prompt=job.prompt.ids,
            max_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            on_done=on_done,
            stop_strings=params.stop,
            logit_bias=params.logit_bias,
            on_token=on_token,
            cancel=job.cancel,
        )

    def _reserve(self) -> None:
        if self.queue.waiting >= self.limits.max_waiting:
            raise RequestError(
                503,
                f"the server is busy: {self.queue.waiting} generation requests are waiting; "
                "retry later",
                code="server_busy",
                type="server_error",
            )

    def check_capacity(self) -> None:
        """Refuse (503) before a response starts when too many requests wait for the model."""
        self._reserve()

    def _submit(self, prompt: Prompt, params: GenerationParams, streamer=None) -> GenerationJob:
        """Queues the generation; the job's future completes when its answer has ended."""
        job = GenerationJob(prompt, params, asyncio.get_running_loop().create_future(), streamer)
        self.queue.submit(job)
        return job

    async def complete(self, prompt: Prompt, params: GenerationParams) -> Generation:
        """One whole answer; waits its turn for the model without blocking the event loop."""
        self._reserve()
        job = self._submit(prompt, params)
        try:
            return await asyncio.shield(job.future)
        except asyncio.CancelledError:
            job.cancel.set()  # the caller stopped waiting: free its row
            raise

    async def stream(
        self, prompt: Prompt, params: GenerationParams, done: Callable[[Generation], None]
    ) -> AsyncIterator[str]:
        """The answer's text as it is generated; `done` receives the finished Generation."""
        streamer = AsyncTextIteratorStreamer(
            self.tokenizer, skip_prompt=True, skip_special_tokens=True
        )
        job = self._submit(prompt, params, streamer)
        text = TextFilter(params.stop)
        try:
            async for piece in streamer:
                out = text.feed(piece)
                if out:
                    yield out
                if text.stopped:
                    job.cancel.set()
                    break
            result = await job.future
            tail = text.finish()
            if tail:
                yield tail
            done(result)
        finally:
            job.cancel.set()  # the client left (or a stop string was met): free the model early


class TextFilter:
    """Streamed text made identical to the whole answer: no leading or trailing whitespace,
    cut before the first stop string. Text that might be the start of a stop string, and
    whitespace that might be trailing, is held back until the next piece decides."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = stops
        self.buffer = ""
        self.started = False
        self.stopped = False

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        self.buffer += piece
        if not self.started:
            self.buffer = self.buffer.lstrip()
            self.started = bool(self.buffer)
        cuts = [self.buffer.find(s) for s in self.stops if s in self.buffer]
        if cuts:
            self.stopped = True
            out, self.buffer = self.buffer[: min(cuts)].rstrip(), ""
            return out
        safe = min(len(self.buffer.rstrip()), len(self.buffer) - self._stop_prefix())
        out, self.buffer = self.buffer[:safe], self.buffer[safe:]
        return out

    def _stop_prefix(self) -> int:
        """Length of the longest end of the buffer that a stop string starts with."""
        for n in range(min(len(self.buffer), max(map(len, self.stops), default=1) - 1), 0, -1):
            if any(s.startswith(self.buffer[-n:]) for s in self.stops):
                return n
        return 0

    def finish(self) -> str:
        if self.stopped:
            return ""
        out, self.buffer = self.buffer.rstrip(), ""
        return out
