"""The baseline: sequence classification with LoRA as the Hugging Face tutorials write it.

transformers' "Text classification" task guide + PEFT's LoRA guide, nothing tuned: tokenise with
`datasets.map(truncation=True)`, pad each batch with `DataCollatorWithPadding`, random batches,
`TrainingArguments` with evaluation and a checkpoint each epoch and the best model loaded at the
end, `compute_metrics` with accuracy (and macro-F1, which the benchmark compares).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def train_baseline(
    model_path: str | Path,
    train_file: str | Path,
    validation_file: str | Path,
    output_dir: str | Path,
    *,
    test_file: Path | None = None,
    text_field: str = "text",
    label_field: str = "label",
    epochs: float = 2,
    max_steps: int = -1,
    batch_size: int = 16,
    learning_rate: float = 5e-4,
    warmup_ratio: float = 0.0,
    weight_decay: float = 0.0,
    max_length: int = 256,
    seed: int = 0,
    lora_r: int = 16,
    lora_alpha: float = 32,
    lora_dropout: float = 0.05,
    target_modules: str | list[str] = "all-linear",
) -> dict[str, Any]:
    import numpy as np
    from datasets import load_dataset
    from peft import LoraConfig, TaskType, get_peft_model
    from sklearn.metrics import accuracy_score, f1_score
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    files = {"train": str(train_file), "validation": str(validation_file)}
    if test_file is not None:
        files["test"] = str(test_file)
    data = load_dataset("csv", data_files=files)
    data = data.class_encode_column(label_field)  # label names -> ids, in sorted order
    labels = data["train"].features[label_field].names
    label2id = {label: i for i, label in enumerate(labels)}
    id2label = dict(enumerate(labels))

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    def preprocess(batch):
        return tokenizer(batch[text_field], truncation=True, max_length=max_length)

    tokenized = data.map(preprocess, batched=True, remove_columns=[text_field])
    if label_field != "label":
        tokenized = tokenized.rename_column(label_field, "label")

    model = AutoModelForSequenceClassification.from_pretrained(
        model_path, num_labels=len(labels), id2label=id2label, label2id=label2id
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    model = get_peft_model(
        model,
        LoraConfig(
            task_type=TaskType.SEQ_CLS,  # also trains and saves the new `score` head
            r=lora_r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            target_modules=target_modules,
        ),
    )

    def compute_metrics(eval_pred):
        logits, y = eval_pred
        preds = np.argmax(logits, axis=-1)
        return {
            "accuracy": accuracy_score(y, preds),
            "macro_f1": f1_score(y, preds, average="macro"),
        }

    args = TrainingArguments(
        output_dir=str(output_dir),
        learning_rate=learning_rate,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        num_train_epochs=epochs,
        max_steps=max_steps,
        weight_decay=weight_decay,
        warmup_steps=warmup_ratio,  # transformers 5: a float below 1 is a ratio
        eval_strategy="epoch",
        save_strategy="epoch",
        load_best_model_at_end=True,
        seed=seed,
        report_to="none",
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"],
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer=tokenizer),
        compute_metrics=compute_metrics,
    )
    trainer.train()
    final = trainer.evaluate()
    quality = {
        "accuracy": final["eval_accuracy"],
        "macro_f1": final["eval_macro_f1"],
        "loss": final["eval_loss"],
    }
    if test_file is not None:  # held out: not seen when the best epoch was chosen
        test = trainer.evaluate(tokenized["test"], metric_key_prefix="test")
        quality |= {k: test[k] for k in ("test_accuracy", "test_macro_f1", "test_loss")}
    return quality
