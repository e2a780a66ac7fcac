"""The baseline: chat fine-tuning with LoRA as a user writes it with transformers + PEFT.

Render each chat with the tokenizer's chat template, tokenise it, copy input_ids to labels with
-100 everywhere except the assistant turns (each up to and including its end-of-turn token), pad
batches with `DataCollatorForSeq2Seq`, and let `AutoModelForCausalLM` compute its loss, which
projects every position onto the full vocabulary. Random batches, evaluation and a checkpoint
every `eval_steps`, the best model loaded at the end; no generation metrics.
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
    messages_field: str = "messages",
    epochs: float = 1,
    max_steps: int = -1,
    batch_size: int = 8,
    learning_rate: float = 1e-3,
    warmup_ratio: float = 0.0,
    weight_decay: float = 0.0,
    max_length: int = 256,
    eval_steps: int | None = None,
    seed: int = 0,
    lora_r: int = 16,
    lora_alpha: float = 32,
    lora_dropout: float = 0.05,
    target_modules: str | list[str] = "all-linear",
) -> dict[str, Any]:
    import torch
    from datasets import load_dataset
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def tokens(messages, **kwargs) -> list[int]:
        out = tokenizer.apply_chat_template(messages, tokenize=True, **kwargs)
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    def preprocess(example):
        messages = example[messages_field]
        input_ids = tokens(messages)
        labels = [-100] * len(input_ids)
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            start = len(tokens(messages[:i], add_generation_prompt=True))
            end = input_ids.index(end_of_turn, start) + 1
            labels[start:end] = input_ids[start:end]
        return {"input_ids": input_ids[:max_length], "labels": labels[:max_length]}

    data = load_dataset(
        "json", data_files={"train": str(train_file), "validation": str(validation_file)}
    )
    tokenized = data.map(preprocess, remove_columns=data["train"].column_names)
    tokenized = tokenized.filter(lambda ex: any(x != -100 for x in ex["labels"]))

    model = AutoModelForCausalLM.from_pretrained(model_path)
    model.config.pad_token_id = tokenizer.pad_token_id
    model = get_peft_model(
        model,
        LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=lora_r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            target_modules=target_modules,
        ),
    )
    strategy = "steps" if eval_steps else "epoch"
    args = TrainingArguments(
        output_dir=str(output_dir),
        learning_rate=learning_rate,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        num_train_epochs=epochs,
        max_steps=max_steps,
        weight_decay=weight_decay,
        warmup_steps=warmup_ratio,  # transformers 5: a float below 1 is a ratio
        eval_strategy=strategy,
        save_strategy=strategy,
        eval_steps=eval_steps,
        save_steps=eval_steps,
        load_best_model_at_end=True,
        seed=seed,
        report_to="none",
    )
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"],
        processing_class=tokenizer,
        data_collator=collator,
    )
    trainer.train()
    final = trainer.evaluate()

    # The Trainer's eval_loss averages batch means; the benchmark compares the token-weighted
    # mean over all answer tokens (what tuneforge reports), computed here the plain way.
    model = trainer.model.eval()
    total, count = 0.0, 0
    rows = tokenized["validation"]
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            batch = collator([rows[j] for j in range(i, min(i + batch_size, len(rows)))])
            batch = {k: v.to(model.device) for k, v in batch.items()}  # the GPU, where there is one
            n = int((batch["labels"][:, 1:] != -100).sum())
            total += float(model(**batch).loss) * n
            count += n
    return {"loss": total / count, "trainer_eval_loss": final["eval_loss"], "tokens": count}
