"""Continued pretraining data: documents, EOS separators, exact blocks, split by document."""

import json

import pytest

from tuneforge.config import validate_recipe
from tuneforge.data.corpus import pack_documents, read_documents
from tuneforge.errors import TuneforgeError
from tuneforge.tasks.pretrain import PretrainTask


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread avoids OpenMP spin-waiting, up to 40x faster on a busy machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


DOCS = [
    "The quick brown fox jumps over the lazy dog.",
    "A dull, boring mess; I want my money back.",
    "Security alert: failed login from 203.0.113.7 for user admin.",
    "The film was wonderful, moving and beautifully acted.",
    "Classify the following text into one of these categories.",
]


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_blocks_are_the_eos_joined_stream_cut_at_exact_boundaries(tiny_tokenizer):
    tok = tiny_tokenizer
    stream = [t for d in DOCS for t in [*_ids(tok, d), tok.eos_token_id]]
    block = 16
    packed = pack_documents(tok, DOCS, block)
    blocks = packed.dataset["input_ids"]
    assert packed.tokens == len(stream)
    assert packed.blocks == len(stream) // block == len(blocks)
    assert packed.dropped_tokens == len(stream) % block
    for k, ids in enumerate(blocks):
        assert ids == stream[k * block : (k + 1) * block]  # boundaries at multiples of block
    assert packed.dataset["labels"] == blocks  # every token trained, EOS included
    assert all(m == [1] * block for m in packed.dataset["attention_mask"])
    assert sum(ids.count(tok.eos_token_id) for ids in blocks) == sum(
        1 for i, t in enumerate(stream[: len(blocks) * block]) if t == tok.eos_token_id
    )


def _recipe(tmp_path, tiny_model, data: dict, max_length: int = 16):
    return validate_recipe(
        {
            "name": "p",
            "task": "pretrain",
            "base_model": str(tiny_model),
            "data": data,
            "training": {"max_length": max_length},
            "output_dir": str(tmp_path / "runs"),
        }
    )


def test_validation_is_held_out_by_document_never_by_block(tmp_path, tiny_model, tiny_tokenizer):
    docs = [f"Document number {i}: " + DOCS[i % len(DOCS)] * 2 for i in range(20)]
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(json.dumps({"text": d}) for d in docs))
    recipe = _recipe(tmp_path, tiny_model, {"train": str(path), "validation_split": 0.25})
    prepared = PretrainTask().prepare(recipe, tiny_tokenizer)
    train_texts = {r["text"] for r in prepared.splits.train}
    val_texts = {r["text"] for r in prepared.splits.validation}
    assert len(val_texts) == 5 and len(train_texts) == 15
    assert train_texts.isdisjoint(val_texts) and train_texts | val_texts == set(docs)
    # The validation blocks are the packed validation documents and nothing else.
    expected = pack_documents(tiny_tokenizer, [r["text"] for r in prepared.splits.validation], 16)
    assert prepared.validation["input_ids"] == expected.dataset["input_ids"]
    assert prepared.info["documents"] == {"train": 15, "validation": 5}
    assert prepared.info["blocks"]["validation"] == len(prepared.validation)


def test_folders_of_text_files_with_a_separate_validation_folder(
    tmp_path, tiny_model, tiny_tokenizer
):
    for split, docs in (("train", DOCS[:4]), ("validation", DOCS[4:])):
        (tmp_path / split / "sub").mkdir(parents=True)
        for i, d in enumerate(docs):
            (
                tmp_path / split / ("sub" if i % 2 else "") / f"d{i}.{'md' if i % 2 else 'txt'}"
            ).write_text(d)
    (tmp_path / "train" / "empty.txt").write_text("  \n")
    (tmp_path / "train" / "notes.csv").write_text("ignored,file\n")
    recipe = _recipe(
        tmp_path,
        tiny_model,
        {"train": str(tmp_path / "train"), "validation": str(tmp_path / "validation")},
        8,
    )
    prepared = PretrainTask().prepare(recipe, tiny_tokenizer)
    assert sorted(r["text"] for r in prepared.splits.train) == sorted(DOCS[:4])
    assert prepared.info["skipped_empty"]["train"] == 1
    assert all(len(ids) == 8 for ids in prepared.train["input_ids"])


def test_corpus_too_small_for_one_block_names_the_file(tmp_path, tiny_model, tiny_tokenizer):
    (tmp_path / "t.txt").write_text("short text")
    (tmp_path / "v.txt").write_text("also short")
    recipe = _recipe(
        tmp_path,
        tiny_model,
        {"train": str(tmp_path / "t.txt"), "validation": str(tmp_path / "v.txt")},
        256,
    )
    with pytest.raises(TuneforgeError) as e:
        PretrainTask().prepare(recipe, tiny_tokenizer)
    assert f"data.train: {tmp_path / 't.txt'}" in str(e.value)
    assert "fewer than one block of training.max_length=256" in str(e.value)


def test_missing_empty_and_non_text_columns(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"body": "x"}\n')
    with pytest.raises(TuneforgeError, match="has no column 'text'"):
        read_documents(p, "text", what="data.train")
    p.write_text('{"text": ""}\n{"text": "  "}\n')
    with pytest.raises(TuneforgeError, match="column 'text' is empty in every row"):
        read_documents(p, "text", what="data.train")
    p.write_text('{"text": "fine"}\n{"text": 42}\n')
    with pytest.raises(TuneforgeError, match=r"line 2: field 'text' is not text \(int\)"):
        read_documents(p, "text", what="data.train")
    p.write_text('{"text": "fine"}\n{"text": ""}\n')
    docs = read_documents(p, "text", what="data.train")
    assert [d["text"] for d in docs.rows] == ["fine"] and docs.skipped_empty == 1


def test_folder_without_text_files(tmp_path):
    (tmp_path / "x.csv").write_text("a\n1\n")
    with pytest.raises(TuneforgeError, match="has no .txt or .md files"):
        read_documents(tmp_path, "text", what="data.train")
