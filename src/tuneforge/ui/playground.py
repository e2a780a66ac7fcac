"""The playground: one run's tuned model beside its untouched base model.

Classification: the tuned model's label and probabilities (`Run.predict`) beside the base model's
zero-shot answer, scored exactly as the run's baseline was (`zero_shot_scores` with the recipe's
instruction and label words). Generative runs: both models answer a chat through the server's
generation code (`deploy.server.engine.ModelService`: the run's chat template, system prompt and
stop tokens, streamed), the base model in a service of its own. The models of the last run tried
stay loaded; another run replaces them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.deploy.limits import Limits
from tuneforge.deploy.server.engine import ModelService, RequestError
from tuneforge.errors import TuneforgeError
from tuneforge.evaluation.zero_shot import DEFAULT_INSTRUCTION, softmax, zero_shot_scores
from tuneforge.runs.run import Run
from tuneforge.tasks.base import base_language_model

MAX_TEXTS = 16
MAX_TEXT_CHARS = 4_000
MAX_MESSAGES = 64
MAX_NEW_TOKENS = 512


@dataclass
class _BaseRun:
    """What ModelService reads of a run, with the base model's weights: same tokenizer, chat
    template, system prompt and stop tokens as the tuned run."""

    run: Run

    def __post_init__(self) -> None:
        self.meta, self.task, self.recipe = self.run.meta, self.run.task, self.run.recipe
        self.tokenizer = self.run.tokenizer
        self.labels = self.run.labels
        self.model = base_language_model(self.run.source, self.run.recipe, self.run.precision)


class Playground:
    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits(generation_batch=1, generation_wait=0.0)
        self._lock = threading.Lock()
        self._scoring = threading.Lock()  # one classification at a time on the shared models
        self._path: Path | None = None
        self._services: dict[str, ModelService] = {}
        self._run: Run | None = None
        self._base_model = None

    def _load(self, path: Path) -> Run:
        """The run's tuned model (and, for a generative run, both services), loaded once."""
        with self._lock:
            if self._path != path:
                self.close()
                run = Run.load(path)
                self._run, self._path, self._base_model = run, path, None
            return self._run

    def services(self, path: Path) -> dict[str, ModelService]:
        run = self._load(path)
        with self._lock:
            if not self._services:
                if run.meta["task"] == "classification":
                    raise TuneforgeError("a classification run has no chat: use its classify box")
                tuned = ModelService(run, "tuned", self.limits)
                tuned.load()
                base = ModelService(_BaseRun(run), "base", self.limits)  # type: ignore[arg-type]
                base.load()
                self._services = {"tuned": tuned, "base": base}
            return self._services

    def classify(self, path: Path, texts: list[str]) -> dict[str, Any]:
        texts = _checked_texts(texts)
        run = self._load(path)
        if run.meta["task"] != "classification":
            raise TuneforgeError(f"a {run.meta['task']} run does not classify: chat with it")
        with self._scoring:
            tuned = run.predict(texts)
            scores = self._zero_shot(run, texts)
        labels = run.labels or []
        probs = softmax(scores)
        base = [
            {
                "label": labels[int(np.argmax(row))],
                "probabilities": {
                    lab: round(float(p), 6) for lab, p in zip(labels, row, strict=True)
                },
            }
            for row in probs
        ]
        return {
            "labels": labels,
            "results": [
                {"text": t, "tuned": _plain(tu), "base": b}
                for t, tu, b in zip(texts, tuned, base, strict=True)
            ],
        }

    def _zero_shot(self, run: Run, texts: list[str]) -> np.ndarray:
        """The base model's label-word scores, as the run's baseline measured them."""
        with self._lock:
            if self._base_model is None:
                self._base_model = base_language_model(run.source, run.recipe, run.precision)
            base_model = self._base_model
        words = [(run.recipe.baseline.label_words or {}).get(lab, lab) for lab in run.labels or []]
        return zero_shot_scores(
            base_model,
            run.tokenizer,
            texts,
            words,
            run.recipe.baseline.instruction or DEFAULT_INSTRUCTION,
            max_length=run.recipe.training.max_length + 64,
            description="Base model zero-shot",
        )

    async def chat(
        self, path: Path, who: str, messages: list[dict[str, str]], max_tokens: int
    ) -> AsyncIterator[str]:
        """The answer of `who` (tuned | base), piece by piece, as the server streams it."""
        if who not in ("tuned", "base"):
            raise TuneforgeError("who must be 'tuned' or 'base'")
        messages = _checked_messages(messages)
        if not 1 <= max_tokens <= MAX_NEW_TOKENS:
            raise TuneforgeError(f"max_tokens must be 1 to {MAX_NEW_TOKENS}")
        service = (await asyncio.to_thread(self.services, path))[who]
        try:
            if service.task == "pretrain":  # a raw-text model continues the text, as trained
                prompt = await asyncio.to_thread(service.completion_prompt, messages[-1]["content"])
            else:
                prompt = await asyncio.to_thread(service.chat_prompt, messages)
            params = service.params(prompt, max_tokens, 0.0, 1.0, [], None, None)
        except RequestError as e:
            raise TuneforgeError(e.message) from None
        async for piece in service.stream(prompt, params, lambda _gen: None):
            yield piece

    def close(self) -> None:
        for service in self._services.values():
            service.close()
        self._services = {}
        self._run = self._path = self._base_model = None


def _plain(prediction: dict[str, Any]) -> dict[str, Any]:
    return {
        "label": prediction.get("label"),
        "probabilities": {
            k: round(float(v), 6) for k, v in (prediction.get("probabilities") or {}).items()
        },
    }


def _checked_texts(texts: list[str]) -> list[str]:
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise TuneforgeError("type at least one text (one per line)")
    if len(texts) > MAX_TEXTS:
        raise TuneforgeError(f"{len(texts)} texts; the playground takes at most {MAX_TEXTS}")
    if any(len(t) > MAX_TEXT_CHARS for t in texts):
        raise TuneforgeError(f"a text is over {MAX_TEXT_CHARS} characters")
    return texts


def _checked_messages(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    if not messages or len(messages) > MAX_MESSAGES:
        raise TuneforgeError(f"a chat has 1 to {MAX_MESSAGES} messages")
    out = []
    for m in messages:
        role, content = m.get("role"), m.get("content")
        if role not in ("user", "assistant", "system") or not isinstance(content, str):
            raise TuneforgeError("each message needs a role (user, assistant, system) and content")
        if len(content) > MAX_TEXT_CHARS:
            raise TuneforgeError(f"a message is over {MAX_TEXT_CHARS} characters")
        out.append({"role": role, "content": content})
    if out[-1]["role"] != "user":
        raise TuneforgeError("the chat must end with a user message")
    return out
