"""Task `sft`: supervised instruction and chat tuning of the causal LM.

Rows (chat messages, prompt/completion pairs or Alpaca instruction/input/output) become chats,
rendered with the base model's own chat template (data/chat.py, the same rendering `generate`,
`chat` and `predict` use). The loss covers the assistant turns and their end-of-turn token by
default, so the model learns to answer and to stop. Evaluation adds, on a few validation examples
answered greedily, exact match, first-line exact match, ROUGE-L, chrF and BLEU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datasets import Dataset

from tuneforge.answer_forward import can_share_prefix
from tuneforge.config import Recipe
from tuneforge.data import canaries
from tuneforge.data.chat import (
    FALLBACK_TEMPLATE,
    ChatFields,
    Encoded,
    conversation,
    detect_format,
    encode_chat,
    encode_prompt,
    end_of_turn,
    input_format,
    prompt_and_reference,
    stop_token_ids,
    trained_segments,
    with_system_prompt,
    without_answer,
)
from tuneforge.data.check import Example
from tuneforge.data.loading import Splits, load_splits, resolve_data_paths
from tuneforge.data.readers import Row, read_records, row_where
from tuneforge.errors import TuneforgeError
from tuneforge.evaluation.language_model import (
    AnswerLogitsCollator,
    GenerationCallback,
    accepts_logits_to_keep,
    lm_loss,
    padding_collator,
)
from tuneforge.evaluation.memorization import ChatView
from tuneforge.evaluation.outcomes import EXAMPLES
from tuneforge.evaluation.text_metrics import GENERATION_METRICS, generation_metrics
from tuneforge.generation import Sampling, generate
from tuneforge.padding_free import FlatteningCollator
from tuneforge.tasks.base import Prepared, Preview
from tuneforge.tasks.causal import CausalLMTask, flat_batches, settle_chat_template, warn_counts


def chat_fields(recipe: Recipe, rows: list[Row], where: str) -> ChatFields:
    """Resolve the recipe's column names and format against a file's columns."""
    d = recipe.data
    names = {
        "messages": d.messages_field,
        "prompt": d.prompt_field,
        "completion": d.completion_field,
        "instruction": d.instruction_field,
        "input": d.input_field,
        "output": d.output_field,
    }
    columns = [c for c in rows[0] if c != "_line"]
    fmt = detect_format(recipe.sft.format, columns, names, where)
    return ChatFields(format=fmt, system_prompt=recipe.sft.system_prompt, **names)


class SftTask(CausalLMTask):
    name = "sft"
    metric_names = ("loss", "perplexity", *GENERATION_METRICS)

    # ---------------------------------------------------------------- data

    def read(self, recipe: Recipe, recipe_dir: Path = Path(".")) -> Splits:
        if (
            recipe.early_stopping.metric in GENERATION_METRICS
            and not recipe.sft.generation_examples
        ):
            raise TuneforgeError(
                f"early_stopping.metric: '{recipe.early_stopping.metric}' needs generated answers "
                "but sft.generation_examples is 0",
                hint="set sft.generation_examples to a few (e.g. 16) or select on loss",
            )
        found: dict[str, ChatFields] = {}

        def check(rows: list[Row], path: Path, what: str) -> None:
            if "fields" not in found:
                found["fields"] = chat_fields(recipe, rows, f"{what}: {path}")
            for row in rows:
                conversation(row, found["fields"], f"{what}: {row_where(path, row)}")

        return load_splits(
            resolve_data_paths(recipe.data, recipe_dir), recipe.training.seed, check=check
        )

    def columns(self, recipe: Recipe, splits: Splits) -> dict[str, Any]:
        where = f"data.train: {splits.sources.get('train', recipe.data.train)}"
        return {"chat": chat_fields(recipe, splits.train, where).to_info()}

    def tokenize(self, splits: Splits, recipe: Recipe, tokenizer) -> Prepared:
        info = self._encoding(recipe, tokenizer, self.columns(recipe, splits))
        lengths: dict[str, list[int]] = {}
        train = self._dataset(
            splits.train, tokenizer, info, "train", splits.sources["train"], lengths
        )
        validation = self._dataset(
            splits.validation,
            tokenizer,
            info,
            "validation",
            splits.sources["validation"],
            lengths,
        )
        if splits.test is not None:
            encoded = encode_rows(splits.test, tokenizer, info)
            lengths["test"] = [e.n_tokens for e in encoded]
            self._count(encoded, info, "test")
        _warn_counts(info, recipe)
        if len(validation) == 0:
            raise TuneforgeError(
                f"data.validation: {splits.sources['validation']}: no example fits in "
                f"training.max_length={recipe.training.max_length}",
                hint="raise training.max_length or set sft.overlong: truncate",
            )
        if len(train) == 0:
            raise TuneforgeError(
                f"data.train: {splits.sources['train']}: no example fits in training.max_length="
                f"{recipe.training.max_length}",
                hint="raise training.max_length or set sft.overlong: truncate",
            )
        return Prepared(splits, train, validation, info, lengths)

    def _encoding(self, recipe: Recipe, tokenizer, columns: dict[str, Any]) -> dict[str, Any]:
        """The run's info on how chats become tokens (the chat template is settled here)."""
        settle_chat_template(tokenizer)
        return {
            **columns,
            "end_of_turn": end_of_turn(tokenizer),
            "train_on": recipe.sft.train_on,
            "overlong": recipe.sft.overlong,
            "max_length": recipe.training.max_length,
        }

    def token_lengths(
        self, rows: list[Row], examples: list, recipe: Recipe, tokenizer
    ) -> list[int]:
        """Tokens of each chat as the template renders it for training, as :meth:`tokenize`
        counts them."""
        if not rows:
            return []
        columns = {"chat": chat_fields(recipe, rows, "data").to_info()}
        info = self._encoding(recipe, tokenizer, columns)
        return [e.n_tokens for e in encode_rows(rows, tokenizer, info)]

    def _dataset(
        self, rows: list[Row], tokenizer, info: dict, split: str, source: str, lengths: dict
    ):
        fields = ChatFields.from_info(info["chat"])
        wheres = [f"data.{split}: {row_where(source, r)}" for r in rows]
        convs = [conversation(r, fields, where) for r, where in zip(rows, wheres, strict=True)]
        ds = Dataset.from_dict({"messages": convs, "where": wheres}).map(
            lambda ex: vars(_encode(tokenizer, ex["messages"], info, ex["where"])),
            remove_columns=["messages", "where"],
            desc=f"Tokenizing {split}",
        )
        self._count(
            [
                Encoded(i, lab, n, s)
                for i, lab, n, s in zip(
                    ds["input_ids"], ds["labels"], ds["n_tokens"], ds["status"], strict=True
                )
            ],
            info,
            split,
        )
        lengths[split] = ds["n_tokens"]
        ds = ds.filter(lambda ex: ex["status"] != "dropped")
        return ds.remove_columns(["n_tokens", "status"])

    def _count(self, encoded: list[Encoded], info: dict, split: str) -> None:
        kept = [e for e in encoded if e.status != "dropped"]
        info.setdefault("examples", {})[split] = len(encoded)
        info.setdefault("truncated", {})[split] = sum(e.status == "truncated" for e in encoded)
        info.setdefault("dropped", {})[split] = len(encoded) - len(kept)
        info.setdefault("tokens", {})[split] = sum(len(e.input_ids) for e in kept)
        info.setdefault("trained_tokens", {})[split] = sum(
            sum(x != -100 for x in e.labels) for e in kept
        )

    def check_examples(self, rows: list[Row], recipe: Recipe, split: str) -> list:
        """Each conversation as 'role: content' lines, so duplicates and leakage are found on the
        chat's words; a malformed row fails here with the same message `train` would give."""
        if not rows:
            return []
        fields = chat_fields(recipe, rows, f"data.{split}")
        out = []
        for i, row in enumerate(rows):
            messages = conversation(row, fields, f"data.{split}: line {row.get('_line', i + 1)}")
            text = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
            out.append(Example(text, row.get("_line", i + 1)))
        return out

    def build_model(self, source, prepared: Prepared, recipe: Recipe, tokenizer=None):
        model = super().build_model(source, prepared, recipe, tokenizer)
        # The Trainer's label smoother takes the labels away from the model and needs every
        # position's logits, so logits are trimmed only without label smoothing.
        self._answer_logits = accepts_logits_to_keep(model) and not recipe.training.label_smoothing
        # Training shares a prefix only where the cache works (gradient checkpointing turns it
        # off) and where the recipe accepts shared dropout masks on it.
        # Padding-free batches (CUDA by default) or the shared prefix: one or the other.
        self._padding_free = flat_batches(model, recipe)
        self._share_prefix = (
            self._answer_logits
            and not self._padding_free
            and recipe.sft.share_prefix
            and not recipe.training.gradient_checkpointing
            and can_share_prefix(model)
        )
        return model

    def collator(self, tokenizer):
        if getattr(self, "_padding_free", False):
            return FlatteningCollator(answer_logits=self._answer_logits)
        if getattr(self, "_answer_logits", False):
            return AnswerLogitsCollator(tokenizer, share_prefix=self._share_prefix)
        return padding_collator(tokenizer)

    def read_eval_rows(self, path: Path, info: dict) -> list[Row]:
        rows = read_records(path, what="--data")
        fields = ChatFields.from_info(info["chat"])
        for row in rows:
            conversation(row, fields, f"--data: {row_where(path, row)}")
        return rows

    # ---------------------------------------------------------------- evaluation

    def trainer_callbacks(
        self, prepared: Prepared, tokenizer, recipe: Recipe, run_path: Path
    ) -> list:
        callbacks = super().trainer_callbacks(prepared, tokenizer, recipe, run_path)
        if recipe.sft.generation_examples:
            rows = prepared.splits.validation
            measure = lambda model: self._generation(model, tokenizer, rows, prepared.info, recipe)  # noqa: E731
            callbacks.append(GenerationCallback(measure, run_path / "samples"))
        return callbacks

    def evaluate(
        self, model, tokenizer, rows: list[Row], info: dict, recipe: Recipe, split: str
    ) -> dict[str, Any]:
        encoded = [e for e in encode_rows(rows, tokenizer, info) if e.status != "dropped"]
        features = [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded]
        batch_size = recipe.training.eval_batch_size or recipe.training.batch_size
        result: dict[str, Any] = {"n": len(rows), "n_scored": len(features)}
        result.update(
            lm_loss(
                model,
                self.loss_collator(model, tokenizer),
                features,
                batch_size,
                f"Loss on {split}",
            )
        )
        if recipe.sft.generation_examples:
            scores, samples = self._generation(model, tokenizer, rows, info, recipe, split)
            result.update(scores)
            result["samples"] = samples
            result.setdefault(EXAMPLES, {}).update(
                prediction=[s["prediction"] for s in samples],
                reference=[s["reference"] for s in samples],
            )
        return result

    def generating(self, recipe: Recipe, n: int) -> Recipe:
        sft = recipe.sft.model_copy(update={"generation_examples": n})
        return recipe.model_copy(update={"sft": sft})

    def loss_collator(self, model, tokenizer):
        if accepts_logits_to_keep(model):
            # Scoring runs without dropout or checkpointing: sharing the prefix is exact.
            return AnswerLogitsCollator(tokenizer, share_prefix=can_share_prefix(model))
        return padding_collator(tokenizer)

    def _generation(
        self,
        model,
        tokenizer,
        rows: list[Row],
        info: dict,
        recipe: Recipe,
        split: str = "validation",
    ):
        """Greedy answers to the first `generation_examples` rows, their metrics and samples."""
        fields = ChatFields.from_info(info["chat"])
        chats = [
            conversation(r, fields, row_where("data", r))
            for r in rows[: recipe.sft.generation_examples]
        ]
        pairs = [prompt_and_reference(c) for c in chats]
        prompts = [encode_prompt(tokenizer, p) for p, _ in pairs]
        sampling = Sampling(max_new_tokens=recipe.sft.max_new_tokens)
        batch_size = recipe.training.eval_batch_size or recipe.training.batch_size
        outs = generate(
            model,
            tokenizer,
            prompts,
            stop_token_ids(tokenizer, info["end_of_turn"]),
            sampling,
            batch_size=batch_size,
            description=f"Generating answers ({split})",
        )
        references = [ref for _, ref in pairs]
        scores = generation_metrics([o.text for o in outs], references)
        scores["generated"] = len(outs)
        samples = [
            {
                "prompt": p[-1]["content"],
                "reference": ref,
                "prediction": o.text,
                "stopped": o.stopped,
            }
            for (p, ref), o in zip(pairs, outs, strict=True)
        ]
        return scores, samples

    # ---------------------------------------------------------------- using the run

    def generate(
        self, model, tokenizer, prompts: list, info: dict, recipe: Recipe, sampling: Sampling
    ):
        """Answers to prompts (text: one user turn; a list of messages: a whole chat)."""
        chats = [self._as_chat(p, recipe) for p in prompts]
        ids = [encode_prompt(tokenizer, c) for c in chats]
        return generate(
            model, tokenizer, ids, stop_token_ids(tokenizer, info["end_of_turn"]), sampling
        )

    def _as_chat(self, prompt, recipe: Recipe) -> list[dict]:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        return with_system_prompt(messages, recipe.sft.system_prompt)

    def canary_row(self, canary, columns: dict[str, Any]) -> dict:
        return canaries.chat_row(canary, ChatFields.from_info(columns["chat"]))

    def memorization_view(self, tokenizer, info: dict, recipe: Recipe):
        fields = ChatFields.from_info(info["chat"])
        return ChatView(tokenizer, fields, stop_token_ids(tokenizer, info["end_of_turn"]))

    def inputs_from_rows(self, rows: list[Row], path: Path, info: dict) -> list:
        """Chats to answer: in the run's data format, else the format the file's columns show."""
        fields = ChatFields.from_info(info["chat"])
        columns = [c for c in rows[0] if c != "_line"]
        fields = ChatFields(
            **{**fields.to_info(), "format": input_format(columns, fields, f"--input: {path}")}
        )
        out = []
        for row in rows:
            chat = without_answer(
                conversation(row, fields, f"--input: {row_where(path, row)}", need_answer=False)
            )
            if not chat or chat[-1]["role"] != "user":
                raise TuneforgeError(
                    f"--input: {row_where(path, row)}: the chat does not end with a user message"
                )
            out.append(chat)
        return out

    def preview(self, recipe: Recipe, tokenizer, recipe_dir: Path, n: int) -> list[Preview]:
        cfg = resolve_data_paths(recipe.data, recipe_dir)
        if not tokenizer.chat_template:
            tokenizer.chat_template = FALLBACK_TEMPLATE
        rows = read_records(cfg.train, what="data.train")
        fields = chat_fields(recipe, rows, f"data.train: {cfg.train}")
        info = {
            "end_of_turn": end_of_turn(tokenizer),
            "train_on": recipe.sft.train_on,
            "overlong": recipe.sft.overlong,
            "max_length": recipe.training.max_length,
        }
        previews = []
        for row in rows[:n]:
            enc = _encode(
                tokenizer,
                conversation(row, fields, f"data.train: {row_where(cfg.train, row)}"),
                info,
            )
            trained = sum(x != -100 for x in enc.labels)
            note = f"{len(enc.input_ids)} tokens, {trained} trained"
            if enc.status != "ok":
                note += f"; {enc.status} ({enc.n_tokens} tokens > max_length {info['max_length']})"
            pieces = [
                (text, "trained" if t else "context")
                for text, t in trained_segments(tokenizer, enc)
            ]
            previews.append(Preview(row_where(cfg.train, row), pieces, note))
        return previews


def _warn_counts(info: dict, recipe: Recipe) -> None:
    limit = f"training.max_length={recipe.training.max_length}"
    why = (
        f"longer than {limit}"
        if recipe.sft.overlong == "drop"
        else f"no assistant token left within {limit}"
    )
    warn_counts(info, why, f"truncated to {limit}")


def _encode(tokenizer, messages: list[dict], info: dict, where: str = "") -> Encoded:
    try:
        return encode_chat(
            tokenizer,
            messages,
            max_length=info["max_length"],
            train_on=info["train_on"],
            overlong=info["overlong"],
            eot=info["end_of_turn"],
        )
    except TuneforgeError as e:  # the template refused this chat: say which row
        raise TuneforgeError(f"{where}: {e.message}" if where else e.message, hint=e.hint) from None


def encode_rows(rows: list[Row], tokenizer, info: dict) -> list[Encoded]:
    fields = ChatFields.from_info(info["chat"])
    out = []
    for row in rows:
        where = row_where("data", row)
        out.append(_encode(tokenizer, conversation(row, fields, where), info, where))
    return out
