"""Task `pretrain`: unsupervised continued pretraining of the causal LM on domain text.

Documents are packed into fixed-length blocks (data/corpus.py), every token is trained, and the
model is measured by loss and perplexity on held-out documents: the validation set is a separate
file/folder or a seeded share of the documents, never of the blocks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneforge.config import Recipe
from tuneforge.data.corpus import Documents, Packed, pack_documents, read_documents
from tuneforge.data.loading import Splits, resolve_data_paths
from tuneforge.data.splits import plain_split
from tuneforge.errors import TuneforgeError
from tuneforge.evaluation.language_model import lm_loss, padding_collator
from tuneforge.generation import Sampling, generate
from tuneforge.progress import console
from tuneforge.tasks.base import Prepared, Preview
from tuneforge.tasks.causal import CausalLMTask


class PretrainTask(CausalLMTask):
    name = "pretrain"
    metric_names = ("loss", "perplexity")

    truncates = False  # documents are packed into blocks: longer than max_length is normal

    # ---------------------------------------------------------------- data

    def check_splits(self, recipe: Recipe, recipe_dir: Path):
        """Documents per split for `data check`, held out by document exactly as `prepare` does."""
        cfg = resolve_data_paths(recipe.data, recipe_dir)
        out = {"train": read_documents(cfg.train, cfg.text_field, what="data.train").rows}
        if cfg.validation is not None:
            out["validation"] = read_documents(
                cfg.validation, cfg.text_field, what="data.validation"
            ).rows
        elif cfg.validation_split is not None:
            out["train"], out["validation"] = plain_split(
                out["train"],
                cfg.validation_split,
                recipe.training.seed,
                what="data.validation_split",
            )
        if cfg.test is not None:
            out["test"] = read_documents(cfg.test, cfg.text_field, what="data.test").rows
        return out, {}

    def check_examples(self, rows: list[dict], recipe: Recipe, split: str) -> list:
        from tuneforge.data.check import Example

        # rows from a folder are whole files: number them by document (files in sorted order)
        return [
            Example(r["text"], i + 1 if r.get("_source") else r.get("_line", i + 1))
            for i, r in enumerate(rows)
        ]

    def prepare(self, recipe: Recipe, tokenizer, recipe_dir: Path = Path(".")) -> Prepared:
        cfg = resolve_data_paths(recipe.data, recipe_dir)
        field, seed = cfg.text_field, recipe.training.seed
        train_docs = read_documents(cfg.train, field, what="data.train")
        sources = {"train": str(cfg.train)}
        docs = {"train": train_docs}
        if cfg.validation is not None:
            docs["validation"] = read_documents(cfg.validation, field, what="data.validation")
            sources["validation"] = str(cfg.validation)
        elif cfg.validation_split is not None:
            train_rows, val_rows = plain_split(
                train_docs.rows, cfg.validation_split, seed, what="data.validation_split"
            )
            docs["train"] = Documents(train_rows, train_docs.skipped_empty, train_docs.source)
            docs["validation"] = Documents(val_rows, 0, f"{cfg.train} (validation_split)")
            sources["validation"] = (
                f"{cfg.train} (validation_split={cfg.validation_split}, seed={seed}, by document)"
            )
        else:
            raise TuneforgeError(
                "data: no validation data",
                hint="set data.validation to a file or folder, or data.validation_split to a "
                "fraction such as 0.1",
            )
        if cfg.test is not None:
            docs["test"] = read_documents(cfg.test, field, what="data.test")
            sources["test"] = str(cfg.test)

        info: dict[str, Any] = {"text_field": field, "block_size": recipe.training.max_length}
        packed = {split: self._pack(tokenizer, d, split, recipe, info) for split, d in docs.items()}
        skipped = sum(d.skipped_empty for d in docs.values())
        if skipped:
            console.print(f"[yellow]warning[/yellow]: {skipped} empty document(s) skipped")
        splits = Splits(
            docs["train"].rows,
            docs["validation"].rows,
            docs["test"].rows if "test" in docs else None,
            sources,
        )
        return Prepared(splits, packed["train"].dataset, packed["validation"].dataset, info)

    def _pack(self, tokenizer, docs: Documents, split: str, recipe: Recipe, info: dict) -> Packed:
        block = recipe.training.max_length
        packed = pack_documents(tokenizer, [r["text"] for r in docs.rows], block, description=split)
        if packed.blocks == 0:
            raise TuneforgeError(
                f"data.{split}: {docs.source}: {packed.tokens} tokens in "
                f"{packed.documents} document(s), "
                f"fewer than one block of training.max_length={block} tokens",
                hint="add more text, or lower training.max_length",
            )
        for key, value in (
            ("documents", packed.documents),
            ("tokens", packed.tokens),
            ("blocks", packed.blocks),
            ("dropped_tail_tokens", packed.dropped_tokens),
            ("skipped_empty", docs.skipped_empty),
        ):
            info.setdefault(key, {})[split] = value
        return packed

    def collator(self, tokenizer):
        from transformers import default_data_collator

        # Blocks are all block_size long: nothing to pad. (DataCollatorForLanguageModeling would
        # mask every pad-token label, and the pad token is often EOS, the document separator.)
        return default_data_collator

    def read_eval_rows(self, path: Path, info: dict) -> list[dict]:
        return read_documents(path, info["text_field"], what="--data").rows

    # ---------------------------------------------------------------- evaluation

    def evaluate(
        self, model, tokenizer, rows: list[dict], info: dict, recipe: Recipe, split: str
    ) -> dict[str, Any]:
        block = info["block_size"]
        packed = pack_documents(tokenizer, [r["text"] for r in rows], block, description=split)
        if packed.blocks == 0:
            raise TuneforgeError(
                f"{split}: {packed.tokens} tokens, fewer than one block of {block} tokens",
                hint="evaluate on more text",
            )
        features = [{"input_ids": ids, "labels": ids} for ids in packed.dataset["input_ids"]]
        batch_size = recipe.training.eval_batch_size or recipe.training.batch_size
        result = {"n": len(rows), "blocks": packed.blocks}
        result.update(
            lm_loss(model, padding_collator(tokenizer), features, batch_size, f"Loss on {split}")
        )
        return result

    # ---------------------------------------------------------------- using the run

    def generate(
        self, model, tokenizer, prompts: list, info: dict, recipe: Recipe, sampling: Sampling
    ):
        """Plain continuations of the prompt text, as the corpus was trained (no chat template)."""
        for p in prompts:
            if not isinstance(p, str):
                raise TuneforgeError("a pretrain run continues text; give a string, not a chat")
        ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        return generate(model, tokenizer, ids, [tokenizer.eos_token_id], sampling)

    def preview(self, recipe: Recipe, tokenizer, recipe_dir: Path, n: int) -> list[Preview]:
        cfg = resolve_data_paths(recipe.data, recipe_dir)
        docs = read_documents(cfg.train, cfg.text_field, what="data.train")
        block = recipe.training.max_length
        packed = pack_documents(
            tokenizer, [r["text"] for r in docs.rows], block, description="train"
        )
        eos = tokenizer.eos_token_id
        previews = []
        for k, ids in enumerate(packed.dataset["input_ids"][:n]):
            pieces: list[tuple[str, str]] = []
            run: list[int] = []
            for t in [*ids, None]:
                if t == eos or t is None:
                    if run:
                        pieces.append((tokenizer.decode(run), "trained"))
                        run = []
                    if t is not None:
                        pieces.append((tokenizer.convert_ids_to_tokens(eos), "special"))
                else:
                    run.append(t)
            previews.append(
                Preview(f"block {k + 1} of {packed.blocks}", pieces, f"{block} tokens, all trained")
            )
        return previews
