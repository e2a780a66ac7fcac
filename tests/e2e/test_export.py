"""`tuneforge export`: adapter, merged and GGUF exports of tiny runs, loaded back with stock
transformers/PEFT and compared with the fine-tuned model; model card; atomic output; bad input."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_user_error, run_cli, sentiment_rows, write_csv, write_jsonl

from tuneforge.deploy.export import describe, export_run
from tuneforge.errors import TuneforgeError

TEXTS = ["great film, loved it", "a waste of two hours and a dull plot", "brilliant fun"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread avoids OpenMP spin-waiting on a busy 2-core machine."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield


def _train(tmp: Path, body: str) -> Path:
    import tuneforge

    recipe = tmp / "recipe.yaml"
    recipe.write_text(body + f"\noutput_dir: {tmp / 'runs'}\n", encoding="utf-8")
    return tuneforge.train(recipe).path


def _chat_rows(n: int, offset: int = 0) -> list[dict]:
    cats = ["phishing", "malware", "benign"]
    return [
        {
            "messages": [
                {"role": "user", "content": f"alert {i}: the quick brown fox {cats[i % 3]}"},
                {"role": "assistant", "content": f"Category: {cats[i % 3]}"},
            ]
        }
        for i in range(offset, offset + n)
    ]


@pytest.fixture(scope="module")
def classification_run(tmp_path_factory, tiny_model) -> Path:
    tmp = tmp_path_factory.mktemp("export-cls")
    train = write_csv(tmp / "train.csv", sentiment_rows(16))
    validation = write_csv(tmp / "validation.csv", sentiment_rows(6, offset=100))
    return _train(
        tmp,
        f"""
name: tiny-cls
base_model: {tiny_model}
task: classification
data: {{train: {train}, validation: {validation}}}
lora: {{r: 4, alpha: 8, dropout: 0.0}}
training: {{max_steps: 4, batch_size: 8, learning_rate: 2.0e-2, logging_steps: 1}}
""",
    )


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, tiny_model) -> Path:
    tmp = tmp_path_factory.mktemp("export-sft")
    train = write_jsonl(tmp / "train.jsonl", _chat_rows(8))
    validation = write_jsonl(tmp / "validation.jsonl", _chat_rows(2, offset=100))
    return _train(
        tmp,
        f"""
name: tiny-sft
base_model: {tiny_model}
task: sft
data: {{train: {train}, validation: {validation}}}
lora: {{r: 4, alpha: 8, dropout: 0.0}}
training: {{max_steps: 4, batch_size: 4, learning_rate: 5.0e-2, logging_steps: 1, max_length: 64}}
baseline: {{enabled: false}}
sft: {{generation_examples: 1, max_new_tokens: 4}}
""",
    )


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_model) -> Path:
    """A pretrain run with method full: the run holds whole weights, no adapter."""
    tmp = tmp_path_factory.mktemp("export-full")
    text = "The quick brown fox jumps over the lazy dog. The film was wonderful and moving. "
    train = write_jsonl(tmp / "train.jsonl", [{"text": text * (3 + i)} for i in range(4)])
    other = "Security alert: failed login from 203.0.113.7 for user admin, category phishing. "
    validation = write_jsonl(
        tmp / "validation.jsonl", [{"text": other * (3 + i)} for i in range(2)]
    )
    return _train(
        tmp,
        f"""
name: tiny-full
base_model: {tiny_model}
task: pretrain
method: full
data: {{train: {train}, validation: {validation}}}
training: {{max_steps: 3, batch_size: 4, learning_rate: 1.0e-2, logging_steps: 1, max_length: 32}}
baseline: {{enabled: false}}
""",
    )


def _export(run: Path, fmt: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    proc = run_cli("export", run, "--format", fmt, "--output", out, *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _record(folder: Path) -> dict:
    return json.loads((folder / "export.json").read_text())


@torch.no_grad()
def _causal_logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids).logits[0].float()


def _probe(run_path: Path) -> torch.Tensor:
    from tuneforge.models import load_tokenizer

    tok = load_tokenizer(run_path / "tokenizer")
    messages = [{"role": "user", "content": "alert 7: the quick brown fox malware"}]
    return tok.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]


def _greedy(model, ids: torch.Tensor, n: int = 8) -> list[int]:
    with torch.no_grad():
        for _ in range(n):
            ids = torch.cat(
                [ids, model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1
            )
    return ids[0].tolist()


# --------------------------------------------------------------------------------------------------
# adapter


def test_adapter_export_loads_on_the_base_with_stock_peft(classification_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import tuneforge

    out = tmp_path / "adapter"
    proc = _export(classification_run, "adapter", out)
    assert "Exported adapter" in proc.stdout
    names = {p.name for p in out.iterdir()}
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "labels.json",
        "README.md",
        "export.json",
    } <= names
    assert "tokenizer_config.json" in names and "tokenizer.json" in names
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left

    labels = json.loads((out / "labels.json").read_text())
    assert labels["labels"] == ["negative", "positive"]
    config = json.loads((out / "adapter_config.json").read_text())
    card = (out / "README.md").read_text()
    assert config["base_model_name_or_path"] in card and "PeftModel.from_pretrained" in card

    # What the card's snippet does: base + head config from labels.json, then the adapter.
    tok = AutoTokenizer.from_pretrained(out)
    base = AutoModelForSequenceClassification.from_pretrained(
        config["base_model_name_or_path"],
        num_labels=len(labels["labels"]),
        id2label={int(k): v for k, v in labels["id2label"].items()},
        label2id=labels["label2id"],
        pad_token_id=labels["pad_token_id"],
    )
    model = PeftModel.from_pretrained(base, out).eval()
    run = tuneforge.load_run(classification_run)
    expected = run.predict(TEXTS)
    for text, want in zip(TEXTS, expected, strict=True):
        with torch.no_grad():
            probs = model(**tok(text, return_tensors="pt")).logits.softmax(-1)[0]
        got = {model.config.id2label[i]: float(p) for i, p in enumerate(probs)}
        assert got == pytest.approx(want["probabilities"], abs=1e-5)


def test_adapter_export_of_a_full_run_is_refused(full_run, tmp_path):
    with pytest.raises(TuneforgeError, match="trained with method 'full'") as e:
        export_run(full_run, "adapter", tmp_path / "x")
    assert "--format merged" in e.value.hint
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------------------------------
# merged


def test_merged_classification_keeps_the_head_and_label_names(classification_run, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import tuneforge

    out = tmp_path / "merged"
    proc = _export(classification_run, "merged", out)
    check = _record(out)["verification"]
    assert check["same_label"] and check["max_abs_logit_diff"] < 1e-4, check
    assert "largest logit difference" in proc.stdout

    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert model.config.label2id == {"negative": 0, "positive": 1}
    tok = AutoTokenizer.from_pretrained(out)
    run = tuneforge.load_run(classification_run)
    expected = run.predict(TEXTS)
    enc = tok(
        TEXTS, return_tensors="pt", padding=True
    )  # a padded batch: pooling needs pad_token_id
    with torch.no_grad():
        probs = model(**enc).logits.softmax(-1)
    for row, want in zip(probs, expected, strict=True):
        assert model.config.id2label[int(row.argmax())] == want["label"]
        assert [float(p) for p in row] == pytest.approx(
            list(want["probabilities"].values()), abs=1e-4
        )


MERGED_PROBE = """
import json, sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
ids = torch.tensor([json.loads(sys.argv[2])])
with torch.no_grad():
    logits = model(input_ids=ids).logits[0]
assert not any(m.startswith("tuneforge") for m in sys.modules), "tuneforge was imported"
print(json.dumps(logits.tolist()))
"""


def test_merged_sft_loads_in_plain_transformers_and_matches_the_adapter_model(
    sft_run, tiny_model, tmp_path
):
    import tuneforge
    from tuneforge.models import load_causal_lm

    out = tmp_path / "merged"
    _export(sft_run, "merged", out)
    assert (out / "model.safetensors").is_file() and not list(out.glob("adapter*"))
    assert (out / "chat_template.jinja").is_file() or "chat_template" in (
        out / "tokenizer_config.json"
    ).read_text()

    ids = _probe(sft_run)
    proc = subprocess.run(
        [sys.executable, "-c", MERGED_PROBE, str(out), json.dumps(ids[0].tolist())],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    merged = torch.tensor(json.loads(proc.stdout))
    adapter = _causal_logits(tuneforge.load_run(sft_run).model, ids)
    assert (merged - adapter).abs().max() < 1e-4
    base = _causal_logits(load_causal_lm(tiny_model).eval(), ids)
    assert (
        adapter - base
    ).abs().max() > 1e-2  # the adapter changed something: the check means something


def test_merged_export_of_a_full_run(full_run, tmp_path):
    from transformers import AutoModelForCausalLM

    import tuneforge

    out = tmp_path / "merged"
    export_run(full_run, "merged", out)
    ids = torch.tensor([[1, 20, 30, 40, 50, 60]])
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    expected = _causal_logits(tuneforge.load_run(full_run).model, ids)
    assert (_causal_logits(model, ids) - expected).abs().max() < 1e-5


# --------------------------------------------------------------------------------------------------
# gguf

# Largest |logit difference| allowed, relative to the largest |logit|: F32 is the same numbers;
# F16 rounds every weight to 11 bits; Q8_0 to 8 bits per block of 32.
# (The tiny model's random weights quantize worse than trained ones: the slow test on the real
# model holds Q8_0 to a tighter bound.)
GGUF_TOLERANCE = {"f32": 1e-5, "f16": 5e-3, "q8_0": 0.1}


@pytest.mark.parametrize("quant", ["f32", "f16", "q8_0"])
def test_gguf_export_loads_back_with_the_same_logits_and_greedy_output(sft_run, tmp_path, quant):
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import tuneforge

    out = tmp_path / quant
    if quant == "f32":  # through the CLI once; the other types through the Python API (faster)
        stdout = _export(sft_run, "gguf", out, "--quant", quant).stdout
    else:
        stdout = "\n".join(describe(export_run(sft_run, "gguf", out, quant=quant)))
    name = f"tiny-sft-{quant.upper()}.gguf"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [name, "Modelfile", "README.md", "export.json"]
    )
    record = _record(out)
    assert record["gguf"]["file"] == name and record["gguf"]["quant"] == quant
    assert (
        record["verification"]["tokenizer_match"] and record["verification"]["chat_template_match"]
    )
    assert "tokenizer identical" in stdout
    assert (out / "Modelfile").read_text().startswith(f"FROM ./{name}\n")

    reader = gguf.GGUFReader(out / name)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_norm.weight"] == "F32"
    assert types["blk.0.attn_q.weight"] == {"f32": "F32", "f16": "F16", "q8_0": "Q8_0"}[quant]
    assert "output.weight" not in types  # tied to token_embd, as llama.cpp writes it
    assert reader.fields["tokenizer.ggml.model"].contents() == "gpt2"

    run = tuneforge.load_run(sft_run)
    model = AutoModelForCausalLM.from_pretrained(out, gguf_file=name, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(out, gguf_file=name)
    assert tok.chat_template == run.tokenizer.chat_template
    assert (tok.bos_token_id, tok.eos_token_id) == (
        run.tokenizer.bos_token_id,
        run.tokenizer.eos_token_id,
    )
    ids = _probe(sft_run)
    messages = [{"role": "user", "content": "alert 7: the quick brown fox malware"}]
    enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
    assert enc["input_ids"] == ids[0].tolist()

    expected = _causal_logits(run.model, ids)
    diff = (_causal_logits(model, ids) - expected).abs().max() / expected.abs().max()
    assert diff < GGUF_TOLERANCE[quant], (quant, float(diff))
    if quant != "q8_0":
        assert _greedy(model, ids) == _greedy(run.model, ids)


def test_gguf_export_of_a_full_pretrain_run(full_run, tmp_path):
    from transformers import AutoModelForCausalLM

    import tuneforge

    out = tmp_path / "gguf"
    export_run(full_run, "gguf", out, quant="f32")
    model = AutoModelForCausalLM.from_pretrained(
        out, gguf_file="tiny-full-F32.gguf", dtype=torch.float32
    ).eval()
    ids = torch.tensor([[1, 20, 30, 40, 50, 60]])
    expected = _causal_logits(tuneforge.load_run(full_run).model, ids)
    assert (_causal_logits(model, ids) - expected).abs().max() < 1e-5
    check = _record(out)["verification"]
    assert check["greedy_match"] and check["top1_agreement"] == 1.0


def test_gguf_of_a_classification_run_is_refused(classification_run, tmp_path):
    proc = run_cli("export", classification_run, "--format", "gguf", "--output", tmp_path / "x")
    assert_user_error(proc, "classification run", "--format merged")


def test_gguf_of_an_unsupported_architecture_is_refused(full_run, tmp_path):
    run = tmp_path / "run-copy"
    shutil.copytree(full_run, run)
    config = json.loads((run / "model" / "config.json").read_text())
    config.update(model_type="starcoder2", architectures=["Starcoder2ForCausalLM"])
    (run / "model" / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        TuneforgeError,
        match=r"'starcoder2' architecture is not supported yet \(supported: llama, mistral",
    ):
        export_run(run, "gguf", tmp_path / "x")
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------------------------------
# model card


def test_model_card_has_data_hashes_metrics_and_loading(classification_run, tmp_path):
    out = tmp_path / "merged"
    _export(classification_run, "merged", out, "--no-verify")
    card = (out / "README.md").read_text()
    meta = json.loads((classification_run / "run.json").read_text())
    train = Path(meta["data_sources"]["train"])
    assert hashlib.sha256(train.read_bytes()).hexdigest() in card
    assert f"{train.stat().st_size} B" in card and "16 examples" in card
    for section in (
        "## Base model",
        "## Data",
        "## Evaluation: base model vs fine-tuned",
        "## Intended use",
        "## Limitations",
        "## How to load it",
    ):
        assert section in card, section
    assert "| macro_f1 |" in card and "`negative`, `positive`" in card
    assert "AutoModelForSequenceClassification.from_pretrained" in card
    assert _record(out)["verification"] is None and "## Export check" not in card


# --------------------------------------------------------------------------------------------------
# output handling and bad input


def test_existing_output_needs_force_and_force_only_replaces_an_earlier_export(sft_run, tmp_path):
    out = tmp_path / "export"
    export_run(sft_run, "adapter", out)
    (out / "stale.txt").write_text("from the earlier export")
    assert_user_error(
        run_cli("export", sft_run, "--format", "adapter", "--output", out),
        "already exists",
        "--force",
    )
    assert (out / "stale.txt").is_file()

    export_run(sft_run, "merged", out, force=True, verify=False)
    assert not (out / "stale.txt").exists() and _record(out)["format"] == "merged"
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no staging or old copy left

    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(TuneforgeError, match="is not a tuneforge export .* not replacing it"):
        export_run(sft_run, "adapter", other, force=True)
    assert (other / "notes.txt").read_text() == "keep me"


def test_a_failed_export_leaves_nothing_behind(sft_run, tmp_path, monkeypatch):
    import tuneforge.deploy.gguf as gguf_writer

    def broken(model, tokenizer, path, **kwargs):
        Path(path).write_bytes(b"GGUF half a file")
        raise RuntimeError("disk full")

    monkeypatch.setattr(gguf_writer, "write_gguf", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export_run(sft_run, "gguf", tmp_path / "new")
    assert list(tmp_path.iterdir()) == []

    export_run(sft_run, "adapter", tmp_path / "old")
    with pytest.raises(RuntimeError, match="disk full"):
        export_run(sft_run, "gguf", tmp_path / "old", force=True)
    assert _record(tmp_path / "old")["format"] == "adapter"  # the earlier export is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["old"]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--format", "ggfu"], ["unknown format 'ggfu'", "did you mean 'gguf'"]),
        (["--format", "gguf", "--quant", "q4_0"], ["unknown --quant 'q4_0'", "f32, f16, q8_0"]),
        (["--format", "merged", "--quant", "f16"], ["--quant applies to --format gguf only"]),
    ],
)
def test_bad_format_or_quant(sft_run, tmp_path, args, fragments):
    kwargs = {"quant": args[3]} if len(args) > 2 else {}
    with pytest.raises(TuneforgeError) as e:
        export_run(sft_run, args[1], tmp_path / "x", **kwargs)
    for fragment in fragments:
        assert fragment in str(e.value)
    assert not (tmp_path / "x").exists()


def test_bad_format_on_the_command_line(sft_run, tmp_path):
    proc = run_cli("export", sft_run, "--format", "ggfu", "--output", tmp_path / "x")
    assert_user_error(proc, "unknown format 'ggfu'", "did you mean 'gguf'")


def test_not_a_run_directory(tmp_path):
    (tmp_path / "folder").mkdir()
    out = tmp_path / "x"
    assert_user_error(
        run_cli("export", tmp_path / "folder", "--format", "merged", "--output", out),
        "not a finished run",
    )
    assert_user_error(
        run_cli("export", tmp_path / "missing", "--format", "merged", "--output", out), "not found"
    )


def test_output_must_be_a_folder_and_not_the_run(sft_run, tmp_path):
    with pytest.raises(TuneforgeError, match="give a folder, not a file name"):
        export_run(sft_run, "gguf", tmp_path / "model.gguf")
    with pytest.raises(TuneforgeError, match="would overwrite the run directory"):
        export_run(sft_run, "adapter", sft_run, force=True)
    with pytest.raises(TuneforgeError, match="would overwrite the run directory"):
        export_run(sft_run, "adapter", sft_run.parent, force=True)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(TuneforgeError, match="cannot write there"):
        export_run(sft_run, "adapter", tmp_path / "a-file" / "out")
