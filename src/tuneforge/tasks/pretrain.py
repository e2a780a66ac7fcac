"""Task `pretrain`: unsupervised continued pretraining of the causal LM on domain text.

Documents are packed into fixed-length blocks (data/corpus.py), every token is trained, and the
model is measured by loss and perplexity on held-out documents: the validation set is a separate
file/folder or a seeded share of the documents, never of the blocks. With padding-free batches
(on a CUDA GPU by default, padding_free.py) documents that share a block do not attend to each
other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import default_data_collator

from tuneforge import devices, padding_free
from tuneforge.config import Recipe
from tuneforge.data.canaries import document_row
from tuneforge.data.check import Example
from tuneforge.data.corpus import Documents, Packed, pack_documents, read_documents
from tuneforge.data.loading import Splits, resolve_data_paths
from tuneforge.data.splits import plain_split
from tuneforge.errors import TuneforgeError
from tuneforge.evaluation.language_model import lm_loss, padding_collator
from tuneforge.evaluation.memorization import TextView
from tuneforge.generation import Sampling, generate
from tuneforge.progress import console
from tuneforge.tasks.base import Prepared, Preview
from tuneforge.tasks.causal import CausalLMTask, flat_batches


@dataclass
class DocumentSplits(Splits):
    """Documents per split, with what reading them left out (empty documents) and where each
    split's documents came from (a file, a folder, or train's held-out share)."""

    skipped_empty: dict[str, int] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)


class PretrainTask(CausalLMTask):
    name = "pretrain"
    metric_names = ("loss", "perplexity")

    truncates = False  # documents are packed into blocks: longer than max_length is normal

    # ---------------------------------------------------------------- data

    def check_splits(self, recipe: Recipe, recipe_dir: Path):
        """Documents per split for `data check`, held out by document exactly as `train` does."""
        return dict(self.read(recipe, recipe_dir).items()), {}

    def check_examples(self, rows: list[dict], recipe: Recipe, split: str) -> list:
        # rows from a folder are whole files: number them by document (files in sorted order)
        return [
            Example(r["text"], i + 1 if r.get("_source") else r.get("_line", i + 1))
            for i, r in enumerate(rows)
        ]

    def read(self, recipe: Recipe, recipe_dir: Path = Path(".")) -> DocumentSplits:
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
        return DocumentSplits(
            docs["train"].rows,
            docs["validation"].rows,
            docs["test"].rows if "test" in docs else None,
            sources,
            skipped_empty={split: d.skipped_empty for split, d in docs.items()},
            origins={split: d.source for split, d in docs.items()},
        )

    def columns(self, recipe: Recipe, splits: Splits) -> dict[str, Any]:
        return {"text_field": recipe.data.text_field}

    def tokenize(self, splits: Splits, recipe: Recipe, tokenizer) -> Prepared:
        info: dict[str, Any] = {
            **self.columns(recipe, splits),
            "block_size": recipe.training.max_length,
        }
        skipped = getattr(splits, "skipped_empty", {})
        origins = getattr(splits, "origins", splits.sources)
        packed = {
            split: self._pack(
                tokenizer, rows, split, origins[split], skipped.get(split, 0), recipe, info
            )
            for split, rows in splits.items()
        }
        if sum(skipped.values()):
            console.print(
                f"[yellow]warning[/yellow]: {sum(skipped.values())} empty document(s) skipped"
            )
        lengths = {split: p.lengths for split, p in packed.items()}
        return Prepared(
            splits, packed["train"].dataset, packed["validation"].dataset, info, lengths
        )

    def _pack(
        self, tokenizer, rows: list[dict], split: str, origin: str, skipped: int, recipe, info
    ) -> Packed:
        block = recipe.training.max_length
        separate = padding_free.wanted(recipe, devices.resolve(recipe.device))
        info["separate_documents"] = separate  # documents in one block attend to each other?
        packed = pack_documents(
            tokenizer, [r["text"] for r in rows], block, description=split, separate=separate
        )
        if packed.blocks == 0:
            raise TuneforgeError(
                f"data.{split}: {origin}: {packed.tokens} tokens in "
                f"{packed.documents} document(s), "
                f"fewer than one block of training.max_length={block} tokens",
                hint="add more text, or lower training.max_length",
            )
        for key, value in (
            ("documents", packed.documents),
            ("tokens", packed.tokens),
            ("blocks", packed.blocks),
            ("dropped_tail_tokens", packed.dropped_tokens),
            ("skipped_empty", skipped),
        ):
            info.setdefault(key, {})[split] = value
        return packed

    def build_model(self, source, prepared: Prepared, recipe: Recipe, tokenizer=None):
        model = super().build_model(source, prepared, recipe, tokenizer)
        flat_batches(model, recipe)  # blocks with position ids: the attention must read them
        return model

    def collator(self, tokenizer):
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

    def canary_row(self, canary, columns: dict[str, Any]) -> dict:
        return document_row(canary)

    def memorization_view(self, tokenizer, info: dict, recipe: Recipe):
        return TextView(tokenizer)

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
