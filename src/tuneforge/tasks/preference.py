"""Task `preference`: learning from human preferences and feedback with TRL's trainers.

Pairwise judgements (prompt, chosen, rejected) train DPO or ORPO; unpaired thumbs up/down
feedback (prompt, completion, label) trains KTO (pairwise data also trains KTO: each pair gives
one thumbs-up and one thumbs-down completion). TRL computes the losses; this module turns rows
into tokens with the model's own chat template (data/preference.py, the rendering generation and
serving use), hands them to TRL's trainer pre-tokenised, and measures base and tuned models the
same way (evaluation/preference.py): preference accuracy on held-out judgements, the implicit
reward accuracy and margin against the reference, a sampled estimate of the KL divergence from it,
and greedy answers side by side.

The reference model is the starting point. With a fresh LoRA adapter it is the model with its
adapter off; continuing an SFT LoRA run, TRL's frozen "ref" copy of the adapter (the SFT model):
no second copy of the base weights either way. Full and freeze runs get a frozen copy of the
starting model.
"""

from __future__ import annotations

import contextlib
import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import PeftModel
from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer

from tuneforge import devices
from tuneforge.config import Recipe
from tuneforge.data.chat import (
    encode_prompt,
    end_of_turn,
    stop_token_ids,
    with_system_prompt,
)
from tuneforge.data.check import Example
from tuneforge.data.loading import Splits, lenient_splits, load_splits, resolve_data_paths
from tuneforge.data.preference import (
    PAIRWISE,
    Feedback,
    Pair,
    PreferenceFields,
    detect_format,
    encode_answer,
    fit,
    parse_row,
    prompt_messages,
)
from tuneforge.data.readers import Row, read_records, row_where
from tuneforge.errors import TuneforgeError
from tuneforge.evaluation.preference import (
    PreferenceCallback,
    answer_logprobs,
    kl_estimate,
    pairwise_metrics,
    reward_metrics,
    unpaired_metrics,
)
from tuneforge.generation import Sampling, generate
from tuneforge.models import load_causal_lm
from tuneforge.tasks.base import Prepared, Preview, base_language_model
from tuneforge.tasks.causal import CausalLMTask, settle_chat_template, warn_counts

PREFERENCE_METRICS = ("preference_accuracy", "logp_margin", "rewards/accuracies", "rewards/margins")


def preference_fields(recipe: Recipe, rows: list[Row], where: str) -> PreferenceFields:
    """The recipe's column names and the data's shape, checked against a file's columns."""
    d, p = recipe.data, recipe.preference
    fields = PreferenceFields(
        format="auto",
        prompt=d.prompt_field,
        chosen=d.chosen_field,
        rejected=d.rejected_field,
        completion=d.completion_field,
        label=d.label_field,
        system_prompt=p.system_prompt,
    )
    columns = [c for c in rows[0] if c != "_line"] if rows else []
    shape = detect_format(p.format, columns, fields, where)
    if shape != PAIRWISE and p.algorithm != "kto":
        raise TuneforgeError(
            f"{where}: preference.algorithm {p.algorithm} learns from pairs (prompt, chosen, "
            "rejected), and this file holds unpaired feedback (prompt, completion, label)",
            hint="set preference.algorithm: kto, or make pairs (tuneforge feedback export --pairs)",
        )
    return PreferenceFields(**{**fields.to_info(), "format": shape})


def _parent_record(run_dir: Path) -> dict[str, Any] | None:
    """run.json's `parent` (the run this one continued), or None."""
    record = Path(run_dir) / "run.json"
    return json.loads(record.read_text()).get("parent") if record.is_file() else None


def prompt_key(recipe: Recipe):
    """A row's prompt as a key: a validation_split holds out whole prompts (feedback has several
    answers to one prompt; split apart, the leakage check would rightly refuse them)."""
    d = recipe.data

    def key(row: Row) -> str:
        value = row.get(d.prompt_field)
        if value is None:  # whole chats: the prompt is what chosen says before its answer
            chosen = row.get(d.chosen_field)
            value = chosen[:-1] if isinstance(chosen, list) else chosen
        return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)

    return key


@dataclass
class _Tokenised:
    rows: dict[str, list]  # dataset columns
    n_tokens: list[int]  # per example, before any cut (prompt + longest answer)
    status: list[str]  # ok | truncated | dropped


class PreferenceTask(CausalLMTask):
    name = "preference"
    default_metric = "preference_accuracy"
    metric_names = ("loss", *PREFERENCE_METRICS)
    starts_from = ("sft", "preference")
    # Whether the model being scored has a reference apart from itself: once training has begun
    # (TRL's trainer built) or for a finished run loaded back; not the starting point scored
    # before training (it is its own reference: rewards and KL would be about the base model).
    _reference_known = False

    # ---------------------------------------------------------------- data

    def read(self, recipe: Recipe, recipe_dir: Path = Path(".")) -> Splits:
        found: dict[str, PreferenceFields] = {}

        def check(rows: list[Row], path: Path, what: str) -> None:
            if "fields" not in found:
                found["fields"] = preference_fields(recipe, rows, f"{what}: {path}")
            for row in rows:
                parse_row(row, found["fields"], f"{what}: {row_where(path, row)}")

        return load_splits(
            resolve_data_paths(recipe.data, recipe_dir),
            recipe.training.seed,
            check=check,
            group=prompt_key(recipe),
        )

    def check_splits(self, recipe: Recipe, recipe_dir: Path):
        return lenient_splits(recipe, recipe_dir, group=prompt_key(recipe))

    def columns(self, recipe: Recipe, splits: Splits) -> dict[str, Any]:
        where = f"data.train: {splits.sources.get('train', recipe.data.train)}"
        return {"preference": preference_fields(recipe, splits.train, where).to_info()}

    def _encoding(self, recipe: Recipe, tokenizer, columns: dict[str, Any]) -> dict[str, Any]:
        settle_chat_template(tokenizer)
        p = recipe.preference
        return {
            **columns,
            "end_of_turn": end_of_turn(tokenizer),
            "algorithm": p.algorithm,
            "beta": p.beta,
            "overlong": p.overlong,
            "max_length": recipe.training.max_length,
        }

    def tokenize(self, splits: Splits, recipe: Recipe, tokenizer) -> Prepared:
        info = self._encoding(recipe, tokenizer, self.columns(recipe, splits))
        lengths: dict[str, list[int]] = {}
        datasets = {}
        for split, rows in splits.items():
            done = self._tokenise(rows, tokenizer, info, f"data.{split}")
            lengths[split] = done.n_tokens
            _count(info, split, done)
            if split != "test":
                datasets[split] = Dataset.from_dict(done.rows)
                if split == "train" and info["algorithm"] == "kto":
                    datasets[split] = datasets[split].shuffle(seed=recipe.training.seed)
                if len(datasets[split]) == 0:
                    raise TuneforgeError(
                        f"data.{split}: {splits.sources.get(split)}: no example fits in "
                        f"training.max_length={recipe.training.max_length}",
                        hint="raise training.max_length or set preference.overlong: truncate",
                    )
        _warn_counts(info, recipe)
        return Prepared(splits, datasets["train"], datasets["validation"], info, lengths)

    def _tokenise(self, rows: list[Row], tokenizer, info: dict, what: str) -> _Tokenised:
        fields = PreferenceFields.from_info(info["preference"])
        eot, limit, overlong = info["end_of_turn"], info["max_length"], info["overlong"]
        unpair = info["algorithm"] == "kto"
        columns: dict[str, list] = (
            {"prompt_ids": [], "completion_ids": [], "label": []}
            if unpair
            else {"prompt_ids": [], "chosen_ids": [], "rejected_ids": []}
        )
        n_tokens, status = [], []
        for row in rows:
            example = parse_row(row, fields, f"{what}: {row_where('data', row)}")
            answers = (
                [example.chosen, example.rejected]
                if isinstance(example, Pair)
                else [example.completion]
            )
            encoded = [encode_answer(tokenizer, example.prompt, a, eot) for a in answers]
            prompt_ids = encoded[0].prompt_ids
            ids, state = fit(prompt_ids, [e.answer_ids for e in encoded], limit, overlong)
            n_tokens.append(len(prompt_ids) + max(len(e.answer_ids) for e in encoded))
            status.append(state)
            if state == "dropped":
                continue
            if not unpair:
                columns["prompt_ids"].append(prompt_ids)
                columns["chosen_ids"].append(ids[0])
                columns["rejected_ids"].append(ids[1])
                continue
            labels = [True, False] if isinstance(example, Pair) else [example.desirable]
            for answer_ids, label in zip(ids, labels, strict=True):
                columns["prompt_ids"].append(prompt_ids)
                columns["completion_ids"].append(answer_ids)
                columns["label"].append(label)
        return _Tokenised(columns, n_tokens, status)

    def token_lengths(
        self, rows: list[Row], examples: list, recipe: Recipe, tokenizer
    ) -> list[int]:
        if not rows:
            return []
        columns = {"preference": preference_fields(recipe, rows, "data").to_info()}
        info = self._encoding(recipe, tokenizer, columns)
        return self._tokenise(rows, tokenizer, info, "data").n_tokens

    def check_examples(self, rows: list[Row], recipe: Recipe, split: str) -> list:
        """The prompt is what must not leak between splits; a duplicate is the same prompt with
        the same answers; feedback's label (thumbs up/down) is what the balance check counts."""
        if not rows:
            return []
        fields = preference_fields(recipe, rows, f"data.{split}")
        out = []
        for i, row in enumerate(rows):
            line = row.get("_line", i + 1)
            example = parse_row(row, fields, f"data.{split}: line {line}")
            prompt = "\n".join(f"{m['role']}: {m['content']}" for m in example.prompt)
            label = None
            if isinstance(example, Feedback):
                label = "thumbs up" if example.desirable else "thumbs down"
                answers = [example.completion]
            else:
                answers = [example.chosen, example.rejected]
            whole = "\n".join([prompt, *(f"answer: {a}" for a in answers)])
            out.append(Example(prompt, line, label, whole=whole))
        return out

    def read_eval_rows(self, path: Path, info: dict) -> list[Row]:
        rows = read_records(path, what="--data")
        fields = PreferenceFields.from_info(info["preference"])
        columns = [c for c in rows[0] if c != "_line"]
        found = detect_format("auto", columns, fields, f"--data: {path}")
        if found != fields.format:
            raise TuneforgeError(
                f"--data: {path} holds {found} data; this run learned from {fields.format} data"
            )
        for row in rows:
            parse_row(row, fields, f"--data: {row_where(path, row)}")
        return rows

    # ---------------------------------------------------------------- model and trainer

    def build_model(self, source, prepared: Prepared, recipe: Recipe, tokenizer=None):
        self._source = source
        return super().build_model(source, prepared, recipe, tokenizer)

    def collator(self, tokenizer):
        return None  # TRL's trainers batch their own preference data

    def trainer_type(self, recipe: Recipe, model) -> tuple[type, type, dict[str, Any]]:
        """TRL's trainer for the algorithm, its arguments class and the algorithm's settings."""
        self._reference_known = True
        p = recipe.preference
        # Rows carry token ids, not `input_ids`, so batches are drawn at random (no length
        # grouping); lengths were already fitted to training.max_length when tokenising.
        common = {
            "beta": p.beta,
            "max_length": None,
            "disable_dropout": False,
            "train_sampling_strategy": "random",
        }
        if p.algorithm == "dpo":
            return (
                PreTokenisedDPOTrainer,
                DPOConfig,
                {**common, "loss_type": [p.loss_type], "label_smoothing": p.label_smoothing},
            )
        if p.algorithm == "kto":
            return (
                PreTokenisedKTOTrainer,
                KTOConfig,
                {
                    **common,
                    # TRL's KL term pairs each row with its batch neighbours: a fixed order (the
                    # rows were shuffled once, seeded, when tokenised)
                    "train_sampling_strategy": "sequential",
                    "desirable_weight": p.desirable_weight,
                    "undesirable_weight": p.undesirable_weight,
                },
            )
        from trl.experimental.orpo import ORPOConfig  # deferred: TRL's experimental namespace

        return PreTokenisedORPOTrainer(), ORPOConfig, common

    def planning_view(self, prepared: Prepared) -> tuple[Prepared, int]:
        """Each pair as its two sequences, prompt + chosen and prompt + rejected, next to each
        other (TRL runs both in one batch); feedback rows as one sequence each."""
        train = prepared.train
        answers = (
            ["chosen_ids", "rejected_ids"]
            if "chosen_ids" in train.column_names
            else ["completion_ids"]
        )
        ids, labels = [], []
        for row in train:
            for column in answers:
                ids.append(row["prompt_ids"] + row[column])
                labels.append([-100] * len(row["prompt_ids"]) + row[column])
        view = Dataset.from_dict({"input_ids": ids, "labels": labels})
        return Prepared(prepared.splits, view, prepared.validation, prepared.info), len(answers)

    def reference_passes(self, recipe: Recipe) -> int:
        """DPO: the reference on both sequences; KTO: the reference on each row, and the policy
        and reference on its mismatched (KL) row; ORPO: none."""
        return {"dpo": 1, "kto": 3, "orpo": 0}[recipe.preference.algorithm]

    def reference_model(self, model, recipe: Recipe):
        """TRL's `ref_model` argument: None with LoRA (adapter off or the "ref" adapter), else a
        frozen copy of the starting weights (full and freeze train every copy's weights)."""
        if recipe.preference.algorithm == "orpo" or isinstance(model, PeftModel):
            return None
        reference = copy.deepcopy(model).eval()
        for p in reference.parameters():
            p.requires_grad_(False)
        self._reference = reference
        return reference

    def trainer_callbacks(
        self, prepared: Prepared, tokenizer, recipe: Recipe, run_path: Path
    ) -> list:
        rows = prepared.splits.validation
        info = prepared.info

        def measure(model):
            return self._scores(model, tokenizer, rows, info, recipe, "validation")

        return [PreferenceCallback(measure)]

    # ---------------------------------------------------------------- evaluation

    def _scores(self, model, tokenizer, rows, info, recipe: Recipe, split: str) -> dict[str, Any]:
        """Preference accuracy (and margins) of `model`'s own log-probabilities on `rows`."""
        batch = recipe.training.eval_batch_size or recipe.training.batch_size
        examples, sequences = self._sequences(rows, tokenizer, info)
        scores = answer_logprobs(
            model, sequences, batch, tokenizer.pad_token_id, f"Scoring preferences ({split})"
        )
        result = self._preference_metrics(examples, scores)
        result["n"] = len(rows)
        return result

    def _sequences(self, rows, tokenizer, info):
        fields = PreferenceFields.from_info(info["preference"])
        eot = info["end_of_turn"]
        examples, sequences = [], []
        for row in rows:
            example = parse_row(row, fields, row_where("data", row))
            answers = (
                [example.chosen, example.rejected]
                if isinstance(example, Pair)
                else [example.completion]
            )
            encoded = [encode_answer(tokenizer, example.prompt, a, eot) for a in answers]
            kept, state = fit(
                encoded[0].prompt_ids,
                [e.answer_ids for e in encoded],
                info["max_length"],
                "truncate",
            )
            if state == "dropped":
                continue
            examples.append(example)
            sequences.extend((encoded[0].prompt_ids, ids) for ids in kept)
        return examples, sequences

    @staticmethod
    def _preference_metrics(examples, scores) -> dict[str, Any]:
        if examples and isinstance(examples[0], Pair):
            return pairwise_metrics(scores[0::2], scores[1::2])
        return unpaired_metrics(scores, [e.desirable for e in examples])

    def evaluate_base(self, source, tokenizer, splits, info, recipe: Recipe):
        model = base_language_model(source, recipe)
        try:
            scored = {}
            for split, rows in splits.items():
                scored[split] = self._scores(model, tokenizer, rows, info, recipe, split)
                scored[split]["samples"] = self._samples(model, tokenizer, rows, info, recipe)
            return scored
        finally:
            del model
            devices.empty_cache()

    def evaluate(self, model, tokenizer, rows, info, recipe: Recipe, split: str) -> dict[str, Any]:
        batch = recipe.training.eval_batch_size or recipe.training.batch_size
        examples, sequences = self._sequences(rows, tokenizer, info)
        pad = tokenizer.pad_token_id
        policy = answer_logprobs(model, sequences, batch, pad, f"Scoring preferences ({split})")
        result = self._preference_metrics(examples, policy)
        result["n"] = len(rows)
        if self._reference_known:
            scored = (examples, sequences, policy)
            result.update(self._against_reference(model, tokenizer, rows, info, recipe, scored))
        result["samples"] = self._samples(model, tokenizer, rows, info, recipe)
        return result

    def _against_reference(
        self, model, tokenizer, rows, info, recipe: Recipe, scored: tuple
    ) -> dict[str, Any]:
        """DPO's implicit rewards (pairs) and the sampled KL estimate, against the reference;
        `scored` is (examples, sequences, the policy's scores of them)."""
        batch = recipe.training.eval_batch_size or recipe.training.batch_size
        pad = tokenizer.pad_token_id
        examples, sequences, policy = scored
        pairwise = bool(examples) and isinstance(examples[0], Pair)
        sampled = self._sampled(model, tokenizer, rows, info, recipe)
        sampled_policy = answer_logprobs(model, sampled, batch, pad) if sampled else []
        found: dict[str, Any] = {}
        # every policy score is taken before this: with LoRA the reference is the same model
        with self._as_reference(model, recipe) as reference:
            if reference is None:
                return found
            if pairwise:
                ref = answer_logprobs(reference, sequences, batch, pad, "Scoring the reference")
                beta = info.get("beta", recipe.preference.beta)
                found.update(
                    reward_metrics((policy[0::2], policy[1::2]), (ref[0::2], ref[1::2]), beta)
                )
            if sampled:
                found.update(
                    kl_estimate(sampled_policy, answer_logprobs(reference, sampled, batch, pad))
                )
        return found

    @contextlib.contextmanager
    def _as_reference(self, model, recipe: Recipe):
        """The reference model for `model`: the LoRA model with its adapter off (or on its "ref"
        adapter), else the starting weights (the copy made for training, or loaded again)."""
        if isinstance(model, PeftModel):
            if "ref" in model.peft_config:
                previous = model.active_adapter
                model.set_adapter("ref")
                try:
                    yield model
                finally:
                    model.set_adapter(previous)
                return
            with model.disable_adapter():
                yield model
            return
        reference = getattr(self, "_reference", None)
        source = getattr(self, "_source", None)
        if reference is None and source is not None:
            reference = load_causal_lm(source.path, trust_remote_code=recipe.trust_remote_code)
            reference = devices.place(reference, next(model.parameters()).device)
        yield reference

    def _sampled(self, model, tokenizer, rows, info, recipe: Recipe) -> list:
        """(prompt_ids, answer_ids) of one answer sampled per prompt (seeded), for the KL."""
        if not recipe.preference.kl_examples:
            return []
        prompts = self._prompt_ids(rows[: recipe.preference.kl_examples], tokenizer, info)
        sampling = Sampling(
            max_new_tokens=recipe.preference.max_new_tokens, temperature=1.0, top_p=1.0
        )
        torch.manual_seed(recipe.training.seed)
        outs = generate(
            model,
            tokenizer,
            prompts,
            stop_token_ids(tokenizer, info["end_of_turn"]),
            sampling,
            description="Sampling answers (KL)",
        )
        return [(p, o.token_ids) for p, o in zip(prompts, outs, strict=True) if o.token_ids]

    def _prompt_ids(self, rows, tokenizer, info) -> list[list[int]]:
        fields = PreferenceFields.from_info(info["preference"])
        return [
            encode_prompt(tokenizer, parse_row(r, fields, row_where("data", r)).prompt)
            for r in rows
        ]

    def _samples(self, model, tokenizer, rows, info, recipe: Recipe) -> list[dict[str, Any]]:
        """Greedy answers to the first `generation_examples` prompts, beside the data's answers."""
        n = recipe.preference.generation_examples
        if not n:
            return []
        fields = PreferenceFields.from_info(info["preference"])
        examples = [parse_row(r, fields, row_where("data", r)) for r in rows[:n]]
        prompts = [encode_prompt(tokenizer, e.prompt) for e in examples]
        outs = generate(
            model,
            tokenizer,
            prompts,
            stop_token_ids(tokenizer, info["end_of_turn"]),
            Sampling(max_new_tokens=recipe.preference.max_new_tokens),
            batch_size=recipe.training.eval_batch_size or recipe.training.batch_size,
            description="Generating answers",
        )
        samples = []
        for example, out in zip(examples, outs, strict=True):
            sample = {"prompt": example.prompt[-1]["content"], "prediction": out.text}
            if isinstance(example, Pair):
                sample.update(chosen=example.chosen, rejected=example.rejected)
            else:
                sample.update(completion=example.completion, desirable=example.desirable)
            samples.append(sample)
        return samples

    # ---------------------------------------------------------------- using the run

    def load_tuned(self, run_dir: Path, source, info: dict, method: str, tokenizer, recipe: Recipe):
        """The tuned model; a LoRA run that continued a LoRA run also gets the parent's adapter
        as its frozen "ref" adapter (the reference it trained against), when that run is there."""
        model = super().load_tuned(run_dir, source, info, method, tokenizer, recipe)
        self._source = source
        parent = _parent_record(run_dir)
        parent_adapter = Path(parent.get("path", "")) / "adapter" if parent else None
        if not parent:
            self._reference_known = True  # the base model (adapter off, or `source`)
        elif method == "lora" and parent.get("method") == "lora":
            if parent_adapter is not None and parent_adapter.is_dir():
                model.load_adapter(parent_adapter, adapter_name="ref", is_trainable=False)
                self._reference_known = True
        else:  # a full/freeze parent's model is this run's `source`
            self._reference_known = True
        return model

    def system_prompt(self, recipe: Recipe) -> str | None:
        return recipe.preference.system_prompt

    def answer_tokens(self, recipe: Recipe) -> int:
        return recipe.preference.max_new_tokens

    def generate(self, model, tokenizer, prompts: list, info: dict, recipe: Recipe, sampling):
        """Answers to prompts (text: one user turn; a list of messages: a whole chat)."""
        chats = [
            with_system_prompt(
                [{"role": "user", "content": p}] if isinstance(p, str) else p,
                self.system_prompt(recipe),
            )
            for p in prompts
        ]
        ids = [encode_prompt(tokenizer, c) for c in chats]
        return generate(
            model, tokenizer, ids, stop_token_ids(tokenizer, info["end_of_turn"]), sampling
        )

    def inputs_from_rows(self, rows: list[Row], path: Path, info: dict) -> list:
        """Prompts to answer: the prompt column (text or messages)."""
        fields = PreferenceFields.from_info(info["preference"])
        return [prompt_messages(r, fields.prompt, f"--input: {row_where(path, r)}") for r in rows]

    def preview(self, recipe: Recipe, tokenizer, recipe_dir: Path, n: int) -> list[Preview]:
        cfg = resolve_data_paths(recipe.data, recipe_dir)
        rows = read_records(cfg.train, what="data.train")
        columns = {
            "preference": preference_fields(recipe, rows, f"data.train: {cfg.train}").to_info()
        }
        info = self._encoding(recipe, tokenizer, columns)
        fields = PreferenceFields.from_info(info["preference"])
        previews = []
        for row in rows[:n]:
            where = row_where(cfg.train, row)
            example = parse_row(row, fields, f"data.train: {where}")
            if isinstance(example, Pair):
                answers = [("chosen", example.chosen), ("rejected", example.rejected)]
            else:
                up = "thumbs up" if example.desirable else "thumbs down"
                answers = [(up, example.completion)]
            encoded = [
                encode_answer(tokenizer, example.prompt, a, info["end_of_turn"]) for _, a in answers
            ]
            pieces = [(tokenizer.decode(encoded[0].prompt_ids), "context")]
            for (label, _), enc in zip(answers, encoded, strict=True):
                pieces.append((f"\n[{label}] ", "special"))
                pieces.append((tokenizer.decode(enc.answer_ids), "trained"))
            tokens = len(encoded[0].prompt_ids) + max(len(e.answer_ids) for e in encoded)
            note = f"{fields.format}; prompt {len(encoded[0].prompt_ids)} tokens, longest with answer {tokens}"
            if tokens > info["max_length"]:
                note += f"; {info['overlong']} (> max_length {info['max_length']})"
            previews.append(Preview(where, pieces, note))
        return previews


# --------------------------------------------------------------------------------------------------
# TRL's trainers on data tokenised here


def drop_identical_reference(model) -> None:
    """TRL copies a PEFT model's adapter into a frozen "ref" adapter for the reference passes.
    A fresh LoRA adapter is still zero (B = 0), so that copy computes the same function as the
    model with its adapter off, which costs no extra matmuls and no memory: drop it. A continued
    adapter (non-zero) keeps its copy: the reference is then the run being continued."""
    if not isinstance(model, PeftModel) or "ref" not in model.peft_config:
        return
    trained = [p for n, p in model.named_parameters() if ".default." in n and "lora_B" in n]
    if trained and not any(bool(p.detach().any()) for p in trained):
        model.delete_adapter("ref")


class PreTokenisedDPOTrainer(DPOTrainer):
    """TRL's DPO on rows already split into prompt/chosen/rejected token ids by the task."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        drop_identical_reference(self.model)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        return dataset


class PreTokenisedKTOTrainer(KTOTrainer):
    """TRL's KTO on rows already tokenised; only its KL completions are added (its own step)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        drop_identical_reference(self.model)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if not self.calculate_KL:
            return dataset

        def rotate(batch):  # mismatched (prompt, completion) pairs within each batch, as TRL does
            batch["KL_completion_ids"] = [batch["completion_ids"][-1]] + batch["completion_ids"][
                :-1
            ]
            return batch

        return dataset.map(rotate, batched=True, batch_size=args.per_device_train_batch_size)


def PreTokenisedORPOTrainer():  # noqa: N802 - a class built on first use (experimental import)
    from trl.experimental.orpo import ORPOTrainer  # deferred: TRL's experimental namespace

    class _ORPO(ORPOTrainer):
        """TRL's ORPO on rows already tokenised: its per-row tokeniser only lays them out."""

        def tokenize_row(self, feature, model=None):
            prompt = feature["prompt_ids"]
            out = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
            for kind in ("chosen", "rejected"):
                ids = prompt + feature[f"{kind}_ids"]
                out[f"{kind}_input_ids"] = ids
                out[f"{kind}_attention_mask"] = [1] * len(ids)
                out[f"{kind}_labels"] = [-100] * len(prompt) + feature[f"{kind}_ids"]
            return out

    return _ORPO


# --------------------------------------------------------------------------------------------------


def _count(info: dict, split: str, done: _Tokenised) -> None:
    info.setdefault("examples", {})[split] = len(done.status)
    info.setdefault("truncated", {})[split] = done.status.count("truncated")
    info.setdefault("dropped", {})[split] = done.status.count("dropped")


def _warn_counts(info: dict, recipe: Recipe) -> None:
    limit = f"training.max_length={recipe.training.max_length}"
    warn_counts(info, f"longer than {limit}", f"had answers cut to fit {limit}")
