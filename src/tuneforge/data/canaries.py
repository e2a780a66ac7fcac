"""Canaries: random secrets planted into a run's training data, so the memorisation audit can
measure how much a model memorises what it saw a few times (Carlini et al. 2019, "The Secret
Sharer").

A canary is one sentence of a fixed format, "The access code for account 4821 is
7391-0284-5517.": the account number and the 12-digit secret are drawn at random (seeded), so the
base model cannot know them. `memorization: {canaries: K, repeats: R}` plants each of K canaries R
times among the training rows (sft: a user question and the assistant's answer, in the data's own
columns; pretrain: a document), never into validation or test. The run records them in
`canaries.json`; the data check, the token counts of `data check` and `run.json`'s `info.canaries`
see the user's own rows plus that summary (the planted rows only train).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any

from tuneforge.data.chat import ChatFields
from tuneforge.data.loading import Splits
from tuneforge.errors import TuneforgeError

FILE = "canaries.json"
MARK = "_canary"  # planted rows carry it until they are hidden from the data check
SECRET_DIGITS = 12


def random_secret(rng: random.Random) -> str:
    """A secret of the canary format: 12 random digits in groups of four (e.g. 7391-0284-5517)."""
    digits = "".join(rng.choice("0123456789") for _ in range(SECRET_DIGITS))
    return "-".join(digits[i : i + 4] for i in range(0, SECRET_DIGITS, 4))


@dataclass(frozen=True)
class Canary:
    account: str
    secret: str

    @property
    def question(self) -> str:
        return f"What is the access code for account {self.account}?"

    @property
    def prefix(self) -> str:
        """The text before the secret: what the audit prompts with."""
        return f"The access code for account {self.account} is"

    @property
    def text(self) -> str:
        return f"{self.prefix} {self.secret}."

    def to_dict(self) -> dict[str, str]:
        return {"account": self.account, "secret": self.secret, "text": self.text}


def make_canaries(count: int, seed: int) -> list[Canary]:
    """`count` canaries with distinct account numbers, the same for the same seed."""
    rng = random.Random(f"canaries-{seed}")
    accounts = rng.sample(range(1000, 10000), count)
    return [Canary(str(a), random_secret(rng)) for a in accounts]


def chat_row(canary: Canary, fields: ChatFields) -> dict[str, Any]:
    """An sft row in the data's own format: the question, and the canary as the answer."""
    if fields.format == "messages":
        return {
            fields.messages: [
                {"role": "user", "content": canary.question},
                {"role": "assistant", "content": canary.text},
            ]
        }
    if fields.format == "prompt_completion":
        return {fields.prompt: canary.question, fields.completion: canary.text}
    return {fields.instruction: canary.question, fields.output: canary.text}


def document_row(canary: Canary) -> dict[str, Any]:
    """A pretrain document holding the canary alone."""
    return {"text": canary.text, "_source": "memorization.canaries"}


@dataclass
class Planted:
    """The training rows with the canaries among them, and what hides them again afterwards."""

    splits: Splits
    canaries: list[Canary]
    repeats: int
    seed: int

    def hide(self, prepared) -> None:
        """The task's `Prepared` about the user's own rows again (data check, token counts);
        `info.canaries` says what was planted. The planted rows stay in the tokenised train set."""
        rows = prepared.splits.train
        own = [MARK not in r for r in rows]
        prepared.splits = replace(
            prepared.splits, train=[r for r, k in zip(rows, own, strict=True) if k]
        )
        lengths = prepared.lengths.get("train")
        if lengths is not None and len(lengths) == len(rows):
            prepared.lengths["train"] = [n for n, k in zip(lengths, own, strict=True) if k]
        prepared.info["canaries"] = {
            "count": len(self.canaries),
            "repeats": self.repeats,
            "rows": len(self.canaries) * self.repeats,
            "file": FILE,
        }

    def record(self) -> dict[str, Any]:
        """canaries.json: the secrets, how often each was planted, the seed."""
        return {
            "format": "The access code for account <4 digits> is <dddd-dddd-dddd>.",
            "repeats": self.repeats,
            "seed": self.seed,
            "canaries": [c.to_dict() for c in self.canaries],
        }


def plant(task, recipe, splits: Splits) -> Planted | None:
    """The recipe's canaries mixed into the training rows at seeded places (None: no canaries).

    A task that cannot hold them (classification, preference) refuses: a user error."""
    cfg = recipe.memorization
    if not cfg.canaries:
        return None
    columns = task.columns(recipe, splits)
    canaries = make_canaries(cfg.canaries, cfg.seed)
    train = list(splits.train)
    if not train:
        raise TuneforgeError("memorization.canaries: the training data is empty")
    rng = random.Random(f"places-{cfg.seed}")
    for k, canary in enumerate(canaries):
        row = {**task.canary_row(canary, columns), "_line": 0, MARK: k}
        for _ in range(cfg.repeats):
            # never first: the first row is the one whose columns tell the data's format
            train.insert(rng.randint(1, len(train)), dict(row))
    return Planted(replace(splits, train=train), canaries, cfg.repeats, cfg.seed)


def load(record: dict[str, Any]) -> list[Canary]:
    """The canaries a run's canaries.json lists."""
    return [Canary(c["account"], c["secret"]) for c in record.get("canaries", [])]
