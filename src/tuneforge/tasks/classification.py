"""Task `classification`: a linear head on the LLM's last real token, labels from a column.

The model is transformers' `AutoModelForSequenceClassification` (for Llama: a `score` layer on the
hidden state of the right-most non-padding token, so left and right padding both work), which keeps
the result loadable by stock transformers and PEFT.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from peft import PeftModel
from transformers import DataCollatorWithPadding

from tuneforge import devices
from tuneforge.config import Recipe
from tuneforge.data.check import Example
from tuneforge.data.loading import Splits, lenient_splits, load_splits, resolve_data_paths
from tuneforge.data.readers import Row, read_records, require_column, row_where
from tuneforge.errors import TuneforgeError
from tuneforge.evaluation import calibration
from tuneforge.evaluation.bias import load_probe_set, run_probe
from tuneforge.evaluation.metrics import classification_metrics
from tuneforge.evaluation.outcomes import EXAMPLES
from tuneforge.evaluation.zero_shot import DEFAULT_INSTRUCTION, softmax, zero_shot_scores
from tuneforge.models import ModelSource, load_causal_lm, load_sequence_classifier
from tuneforge.precision import precision_of, ready_for_inference
from tuneforge.progress import track
from tuneforge.tasks.base import Prepared, Task, base_language_model


def label_of(row: Row, field: str) -> str:
    """Labels are strings; 1 and '1' are the same label, 1.0 is written as '1'."""
    value = row[field]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def check_rows(
    rows: list[Row], path: Path, what: str, text_field: str, label_field: str | None
) -> None:
    """Every row needs a non-empty text (and a label, when labelled)."""
    require_column(rows, text_field, path, what)
    if label_field is not None:
        require_column(rows, label_field, path, what)
    for row in rows:
        text = row[text_field]
        if text is not None and not isinstance(text, str):
            raise TuneforgeError(
                f"{what}: {row_where(path, row)}: column '{text_field}' holds a {type(text).__name__}, not text"
            )
        if not isinstance(text, str) or not text.strip():
            raise TuneforgeError(
                f"{what}: {row_where(path, row)}: empty text in column '{text_field}'",
                hint="remove the row or fill in its text",
            )
        if label_field is not None and (row[label_field] is None or not label_of(row, label_field)):
            raise TuneforgeError(
                f"{what}: {row_where(path, row)}: empty label in column '{label_field}'"
            )


class ClassificationTask(Task):
    name = "classification"
    peft_task_type = "SEQ_CLS"
    # bf16 on a native-bf16 CPU: the demo's 200 held-out reviews got the same labels as in fp32
    # (largest |dp| 0.055), scored 1.7-2x faster (issue 22)
    infers_in_bf16 = True
    head = "sequence_classification"
    default_metric = "macro_f1"
    metric_names = ("loss", "accuracy", "macro_f1")

    # ---------------------------------------------------------------- data

    def read(self, recipe: Recipe, recipe_dir: Path = Path(".")) -> Splits:
        cfg = resolve_data_paths(recipe.data, recipe_dir)
        text_f, label_f = cfg.text_field, cfg.label_field
        # Unparseable rows stop the run unless the recipe downgraded that data check; then
        # they are skipped (and listed by the data check).
        lenient = {} if recipe.data_checks.parse_errors != "error" else None
        return load_splits(
            cfg,
            recipe.training.seed,
            check=lambda rows, path, what: check_rows(rows, path, what, text_f, label_f),
            stratify=lambda row: label_of(row, label_f),
            skipped=lenient,
        )

    def columns(self, recipe: Recipe, splits: Splits) -> dict[str, Any]:
        return {"text_field": recipe.data.text_field, "label_field": recipe.data.label_field}

    def tokenize(self, splits: Splits, recipe: Recipe, tokenizer) -> Prepared:
        label_f = recipe.data.label_field
        labels = sorted({label_of(r, label_f) for r in splits.train})
        if len(labels) < 2:
            raise TuneforgeError(
                f"data.train: {splits.sources['train']}: only one label ({labels[0]!r}) in "
                f"column '{label_f}'; classification needs two or more"
            )
        known = set(labels)
        for split, rows in (("validation", splits.validation), ("test", splits.test or [])):
            for row in rows:
                if label_of(row, label_f) not in known:
                    raise TuneforgeError(
                        f"data.{split}: {row_where(splits.sources[split], row)}: label "
                        f"{label_of(row, label_f)!r} never appears in the training data {sorted(known)}",
                        hint="fix the label, or add training examples for it",
                    )
        info: dict[str, Any] = {"labels": labels, **self.columns(recipe, splits)}
        lengths: dict[str, list[int]] = {}
        train = self._tokenize(splits.train, tokenizer, recipe, info, "train", lengths)
        validation = self._tokenize(
            splits.validation, tokenizer, recipe, info, "validation", lengths
        )
        info["counts"] = {
            split: {lab: sum(label_of(r, label_f) == lab for r in rows) for lab in labels}
            for split, rows in splits.items()
        }
        return Prepared(splits, train, validation, info, lengths)

    def _tokenize(
        self, rows: list[Row], tokenizer, recipe: Recipe, info: dict, split: str, lengths: dict
    ):
        label_id = {lab: i for i, lab in enumerate(info["labels"])}
        ds = Dataset.from_dict(
            {
                "text": [r[info["text_field"]] for r in rows],
                "labels": [label_id[label_of(r, info["label_field"])] for r in rows],
            }
        )
        max_length = recipe.training.max_length
        ds = ds.map(
            lambda batch: encode(tokenizer, batch["text"], max_length),
            batched=True,
            remove_columns=["text"],
            desc=f"Tokenizing {split}",
        )
        lengths[split] = ds["n_tokens"]
        info.setdefault("truncated", {})[split] = int(sum(n > max_length for n in lengths[split]))
        info.setdefault("tokens", {})[split] = int(sum(min(n, max_length) for n in lengths[split]))
        if split != "train":  # evaluated in order: sorted by length, batches carry little padding
            # A stable sort, as `ds.sort("n_tokens")` was; that one passes pyarrow an argument
            # pyarrow 25 deprecates (a FutureWarning about SortOptions on every run).
            n_tokens = lengths[split]
            ds = ds.select(sorted(range(len(n_tokens)), key=n_tokens.__getitem__))
        return ds.remove_columns("n_tokens")

    def token_lengths(
        self, rows: list[Row], examples: list, recipe: Recipe, tokenizer
    ) -> list[int]:
        """Tokens as the classifier gets them (special tokens included), as :meth:`tokenize`
        counts them."""
        texts = [e.text for e in examples]
        return encode(tokenizer, texts, recipe.training.max_length)["n_tokens"] if texts else []

    # ---------------------------------------------------------------- model

    def build_model(self, source: ModelSource, prepared: Prepared, recipe: Recipe, tokenizer=None):
        pad_id = tokenizer.pad_token_id if tokenizer is not None else None
        return load_sequence_classifier(
            source.path, prepared.info["labels"], pad_id, trust_remote_code=recipe.trust_remote_code
        )

    def collator(self, tokenizer):
        # Right padding: real tokens keep positions 0..n-1, exactly as when scored alone.
        tokenizer.padding_side = "right"
        return DataCollatorWithPadding(tokenizer)

    def trainer_metrics(self, prepared: Prepared, history: list[dict[str, Any]]):
        """Accuracy, macro-F1 and the loss, from the gathered logits of every validation row.

        The loss is the mean negative log-likelihood of the rows, as the final scoring computes
        it, and replaces the Trainer's (its `loss` key is the eval loss). The Trainer's own is a
        mean of per-batch means; under DDP accelerate completes the last uneven batch with
        repeated rows, and that batch's mean, repeats included, stands for its real rows: on the
        sentiment validation set in 2 processes it read 0.233 for a checkpoint whose loss is
        0.257. The logits are gathered exactly (repeats dropped), so this one is the true mean.
        """
        labels = prepared.info["labels"]

        def compute(eval_pred) -> dict[str, float]:
            logits = (
                eval_pred.predictions[0]
                if isinstance(eval_pred.predictions, tuple)
                else eval_pred.predictions
            )
            logits = np.asarray(logits, dtype=np.float64)
            y = np.asarray(eval_pred.label_ids, dtype=np.int64)
            full = classification_metrics(y, logits.argmax(-1), labels)
            history.append(full)
            return {
                "accuracy": full["accuracy"],
                "macro_f1": full["macro_f1"],
                "loss": float(nll(softmax(logits), y).mean()),
            }

        return compute

    # ---------------------------------------------------------------- evaluation

    def evaluate_base(
        self, source, tokenizer, splits, info, recipe: Recipe
    ) -> dict[str, dict[str, Any]]:
        model = base_language_model(source, recipe, devices.recipe_inference_precision(recipe))
        words = [(recipe.baseline.label_words or {}).get(lab, lab) for lab in info["labels"]]
        scored = {}
        for split, rows in splits.items():
            scores = zero_shot_scores(
                model,
                tokenizer,
                [r[info["text_field"]] for r in rows],
                words,
                recipe.baseline.instruction or DEFAULT_INSTRUCTION,
                max_length=recipe.training.max_length + 64,
                description=f"Base model zero-shot on {split}",
            )
            scored[split] = self._score(softmax(scores), rows, info)
        del model  # scored: its GPU memory goes back before training needs it
        devices.empty_cache()
        return scored

    def evaluate(self, model, tokenizer, rows, info, recipe: Recipe, split: str) -> dict[str, Any]:
        probs = self._probabilities(
            model, tokenizer, [r[info["text_field"]] for r in rows], recipe, split
        )
        return self._score(probs, rows, info)

    def _score(self, probs: np.ndarray, rows: list[Row], info: dict) -> dict[str, Any]:
        label_id = {lab: i for i, lab in enumerate(info["labels"])}
        y_true = np.array([label_id[label_of(r, info["label_field"])] for r in rows])
        metrics = classification_metrics(y_true, probs.argmax(-1), info["labels"])
        losses = nll(probs, y_true)
        metrics["loss"] = float(losses.mean())
        # per example, for the intervals (evaluation/intervals.py) and calibration; the run keeps
        # them in outcomes.json, not metrics.json
        metrics[EXAMPLES] = {
            "label": y_true.tolist(),
            "predicted": probs.argmax(-1).tolist(),
            "probabilities": np.round(probs, 6).tolist(),
            "loss": losses.tolist(),
        }
        metrics.update(calibration.figures(probs, y_true))  # ece, mce, reliability (15 bins)
        return metrics

    @torch.no_grad()
    def _probabilities(
        self, model, tokenizer, texts: list[str], recipe: Recipe, split: str = ""
    ) -> np.ndarray:
        model.eval()
        batch_size = recipe.training.eval_batch_size or recipe.training.batch_size
        max_length = recipe.training.max_length
        enc = encode(tokenizer, texts, max_length)
        device = devices.model_device(model)
        out = np.zeros((len(texts), model.config.num_labels))
        batches = padding_capped_batches([len(ids) for ids in enc["input_ids"]], batch_size)
        rows = batches if len(batches) <= 1 else track(batches, f"Scoring {split or 'inputs'}")
        for idx in rows:
            batch = tokenizer.pad(
                {
                    "input_ids": [enc["input_ids"][i] for i in idx],
                    "attention_mask": [enc["attention_mask"][i] for i in idx],
                },
                padding_side="right",
                return_tensors="pt",
            )
            logits = model(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
            ).logits
            out[idx] = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        return out

    def predict(self, model, tokenizer, texts, info, recipe: Recipe) -> list[dict[str, Any]]:
        probs = self._probabilities(model, tokenizer, texts, recipe)
        if info.get("temperature"):  # fitted on validation after training (calibration.json)
            probs = calibration.scale(probs, info["temperature"])
        labels = info["labels"]
        return [
            {
                "label": labels[int(p.argmax())],
                "probabilities": {lab: float(p[i]) for i, lab in enumerate(labels)},
            }
            for p in probs
        ]

    def bias_probe(
        self, model, source, tokenizer, info: dict, recipe: Recipe, extra_terms: Path | None = None
    ):
        """Counterfactual identity swaps, scored for the tuned model and the zero-shot base."""

        probe = load_probe_set(extra_terms)
        labels = info["labels"]
        result = {
            "tuned": run_probe(
                lambda texts: self._probabilities(model, tokenizer, texts, recipe, "bias probe"),
                labels,
                probe,
            )
        }
        if recipe.baseline.enabled:
            device = devices.model_device(model)  # beside the tuned model
            base_lm = ready_for_inference(
                load_causal_lm(source.path, trust_remote_code=recipe.trust_remote_code),
                device,
                "bf16" if precision_of(model) == torch.bfloat16 else "fp32",
            )
            words = [(recipe.baseline.label_words or {}).get(lab, lab) for lab in labels]
            instruction = recipe.baseline.instruction or DEFAULT_INSTRUCTION

            def base(texts):
                return softmax(
                    zero_shot_scores(
                        base_lm,
                        tokenizer,
                        texts,
                        words,
                        instruction,
                        description="Bias probe, base",
                    )
                )

            result["base"] = run_probe(base, labels, probe)
            del base_lm, base
            devices.empty_cache()
        return result

    def check_splits(self, recipe: Recipe, recipe_dir: Path):
        field = recipe.data.label_field
        return lenient_splits(recipe, recipe_dir, stratify=lambda r: str(r.get(field, "")))

    def check_examples(self, rows: list[Row], recipe: Recipe, split: str) -> list:
        text_f, label_f = recipe.data.text_field, recipe.data.label_field
        if rows:
            path = getattr(recipe.data, split, None) or recipe.data.train
            require_column(rows, text_f, path, f"data.{split}")
            require_column(rows, label_f, path, f"data.{split}")
        return [
            Example(
                r.get(text_f) if isinstance(r.get(text_f), str) else "",
                r.get("_line", 0),
                label_of(r, label_f) if r.get(label_f) is not None else None,
            )
            for r in rows
        ]

    def read_eval_rows(self, path: Path, info: dict) -> list[Row]:
        """A labelled file for `eval`: same columns as training, labels from the run's label set."""
        rows = read_records(path, what="--data")
        check_rows(rows, path, "--data", info["text_field"], info["label_field"])
        for row in rows:
            if label_of(row, info["label_field"]) not in info["labels"]:
                raise TuneforgeError(
                    f"--data: {row_where(path, row)}: label {label_of(row, info['label_field'])!r} is not "
                    f"one the model was trained on {info['labels']}"
                )
        return rows

    # ---------------------------------------------------------------- loading a run

    def load_tuned(
        self, run_dir: Path, source: ModelSource, info: dict, method: str, tokenizer, recipe: Recipe
    ):
        if method == "lora":
            base = load_sequence_classifier(
                source.path,
                info["labels"],
                tokenizer.pad_token_id,
                trust_remote_code=recipe.trust_remote_code,
            )
            return PeftModel.from_pretrained(base, run_dir / "adapter")
        return load_sequence_classifier(
            run_dir / "model",
            info["labels"],
            tokenizer.pad_token_id,
            trust_remote_code=recipe.trust_remote_code,
        )


def nll(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each row's negative log-likelihood of its label `y` under `probs` (rows x labels): the loss
    of the final scoring and of the in-training evaluations alike."""
    return -np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0))


def padding_capped_batches(
    lengths: list[int], max_batch: int, max_padding: float = 0.25
) -> list[list[int]]:
    """Indices in batches of similar length: at most `max_batch` each, padding at most
    `max_padding` of the real tokens.

    On a CPU a forward pass costs per token, padded or not, and one text already keeps the cores
    busy, so a padded batch of mixed lengths is slower than no batching at all (measured in
    bench/RESULTS.md); capping the padding keeps batching from costing throughput.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in order:  # ascending: the newcomer is the batch's longest, its length is the padded one
        n = lengths[i]
        if current and (
            len(current) == max_batch or (len(current) + 1) * n > (1 + max_padding) * (real + n)
        ):
            batches.append(current)
            current, real = [], 0
        current.append(i)
        real += n
    if current:
        batches.append(current)
    return batches


def encode(tokenizer, texts: list[str], max_length: int) -> dict[str, list]:
    """Token ids cut to `max_length`, no padding, plus each text's full length (to count cuts).

    `split_special_tokens` keeps user text from ever turning into special tokens such as the pad
    token, which the classifier's last-token pooling relies on.
    """
    enc = tokenizer(list(texts), split_special_tokens=True)
    return {
        "input_ids": [ids[:max_length] for ids in enc["input_ids"]],
        "attention_mask": [m[:max_length] for m in enc["attention_mask"]],
        "n_tokens": [len(ids) for ids in enc["input_ids"]],
    }
