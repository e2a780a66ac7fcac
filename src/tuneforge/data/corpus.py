"""Raw-text corpora for continued pretraining: read documents, pack them into token blocks.

A document is one .txt/.md file, or one row of a JSONL/CSV/Parquet file or saved dataset. Documents
are tokenised, each followed by EOS, concatenated and cut into blocks of exactly `block_size`
tokens (the tail shorter than a block is dropped), so no compute goes to padding. Splits are made
on documents before packing, so no document reaches both training and validation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset

from tuneforge.data.readers import Row, read_records, read_utf8, require_column, row_where
from tuneforge.errors import TuneforgeError
from tuneforge.padding_free import IGNORE, document_positions

TEXT_SUFFIXES = (".txt", ".md")
_SAVED_DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


@dataclass
class Documents:
    rows: list[Row]  # {"text", "_line", "_source"}
    skipped_empty: int = 0
    source: str = ""


def read_documents(path: str | Path, text_field: str, *, what: str) -> Documents:
    """Documents from a text file, a folder of .txt/.md files, or a table with a text column."""
    path = Path(path)
    if not path.exists():
        raise TuneforgeError(f"{what}: file not found: {path}", hint="check the path in the recipe")
    if path.is_dir() and not any((path / m).exists() for m in _SAVED_DATASET_MARKERS):
        return _read_folder(path, what)
    if path.is_file() and path.suffix.lower() in TEXT_SUFFIXES:
        text = read_utf8(path, what)
        if not text.strip():
            raise TuneforgeError(f"{what}: {path} is empty")
        return Documents([{"text": text, "_line": 1, "_source": str(path)}], 0, str(path))
    return _read_table(path, text_field, what)


def _read_folder(path: Path, what: str) -> Documents:
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
    if not files:
        raise TuneforgeError(
            f"{what}: {path} has no .txt or .md files",
            hint="point at a folder of text files, a text file, or a JSONL/CSV/Parquet file "
            "with a text column",
        )
    rows, skipped = [], 0
    for file in files:
        text = read_utf8(file, what)
        if text.strip():
            rows.append({"text": text, "_line": 1, "_source": str(file)})
        else:
            skipped += 1
    if not rows:
        raise TuneforgeError(f"{what}: every .txt/.md file in {path} is empty")
    return Documents(rows, skipped, str(path))


def _read_table(path: Path, text_field: str, what: str) -> Documents:
    rows = read_records(path, what=what)
    require_column(rows, text_field, path, what)
    docs, skipped = [], 0
    for row in rows:
        value = row[text_field]
        if value is None or (isinstance(value, str) and not value.strip()):
            skipped += 1
            continue
        if not isinstance(value, str):
            raise TuneforgeError(
                f"{what}: {row_where(path, row)}: field '{text_field}' is not text "
                f"({type(value).__name__})"
            )
        docs.append({"text": value, "_line": row["_line"], "_source": str(path)})
    if not docs:
        raise TuneforgeError(
            f"{what}: {path}: column '{text_field}' is empty in every row",
            hint="set data.text_field to the column that holds the text",
        )
    return Documents(docs, skipped, str(path))


@dataclass
class Packed:
    dataset: Any  # datasets.Dataset of input_ids / attention_mask / labels, each block_size long
    documents: int
    tokens: int  # including one EOS per document
    blocks: int
    dropped_tokens: int  # the tail shorter than one block
    lengths: list[int] = field(default_factory=list)  # each document's tokens (EOS not counted)


def pack_documents(
    tokenizer,
    texts: list[str],
    block_size: int,
    *,
    description: str = "Packing",
    separate: bool = False,
) -> Packed:
    """Tokenise, add EOS after each document, concatenate and cut into `block_size` blocks.

    With `separate`, documents sharing a block do not attend to each other: the blocks carry
    `position_ids` restarting at each document start and no `attention_mask` (padding_free.py),
    and a document's first token is not a target of the one before it."""
    eos = tokenizer.eos_token_id
    ds = Dataset.from_dict({"text": texts}).map(
        lambda batch: {
            "input_ids": [
                ids + [eos]
                for ids in tokenizer(batch["text"], add_special_tokens=False, verbose=False)[
                    "input_ids"
                ]
            ]
        },
        batched=True,
        remove_columns=["text"],
        desc=f"Tokenizing {description}",
    )
    lengths = [len(ids) - 1 for ids in ds["input_ids"]]
    tokens = sum(lengths) + len(lengths)

    def group(batch: dict[str, list]) -> dict[str, list]:
        # The run_clm recipe: one long stream, cut into equal blocks; labels are the inputs (the
        # model shifts them), EOS included, so the model learns where documents end.
        stream = [t for ids in batch["input_ids"] for t in ids]
        usable = len(stream) // block_size * block_size
        blocks = [stream[i : i + block_size] for i in range(0, usable, block_size)]
        if separate:
            return _separated(blocks, batch["input_ids"], block_size)
        return {
            "input_ids": blocks,
            "attention_mask": [[1] * block_size for _ in blocks],
            "labels": [list(b) for b in blocks],
        }

    packed = ds.map(group, batched=True, batch_size=None, desc=f"Packing {description}")
    dropped = tokens - len(packed) * block_size
    return Packed(packed, len(texts), tokens, len(packed), dropped, lengths)


def _separated(blocks: list[list[int]], documents: list[list[int]], block_size: int) -> dict:
    """Blocks whose documents stay apart: position ids from each token's place in its document,
    restarting in every block, and no label on a document's first token inside a block."""
    places = [p for ids in documents for p in range(len(ids))]
    positions = [
        document_positions(places[i : i + block_size])
        for i in range(0, len(blocks) * block_size, block_size)
    ]
    labels = [
        [IGNORE if p == 0 and j else t for j, (t, p) in enumerate(zip(b, pos, strict=True))]
        for b, pos in zip(blocks, positions, strict=True)
    ]
    return {"input_ids": blocks, "position_ids": positions, "labels": labels}
