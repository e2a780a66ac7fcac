"""The families matrix: every task × method × deploy path on a tiny random model of each family.

Each family is built from its own Hugging Face config inside the test (tuneforge.testing), with
what makes it unlike Llama: Mistral untied and without a pad token, Qwen2's q/k/v biases, Qwen3's
q/k norms, Gemma 3's (1 + w) norms, local/global layers and a chat template without a system
role, Phi-3's fused qkv_proj and gate_up_proj. Every cell trains in this process (a second or
two), then uses the run as a user would: predict, eval against the base, the HTTP server (chat
or classify), and a merged export that is loaded back and compared with the tuned model.
The README's families table is this file's matrix.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import sentiment_rows, write_csv, write_jsonl
from fastapi.testclient import TestClient

import tuneforge
from tuneforge.data.chat import accepts_system_role, render
from tuneforge.deploy.export import export_run
from tuneforge.deploy.server.app import create_app
from tuneforge.models import load_tokenizer
from tuneforge.testing import FAMILIES, NO_SYSTEM_TEMPLATE, build_tiny_model

TASKS = ("classification", "sft", "pretrain", "preference")
METHODS = ("lora", "full", "freeze")
SYSTEM = "Answer in one word."

# What a family's real checkpoints ship that the matrix must survive.
NO_SYSTEM_ROLE = {"gemma3"}  # Gemma 2's and Mistral v0.1's templates raise on a system message
NO_PAD_TOKEN = {"mistral"}  # Mistral, Llama 3: no pad token in the tokenizer or the config
FUSED = {"phi3": ("qkv_proj", "gate_up_proj")}  # LoRA must reach the fused projections


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread avoids OpenMP spin-waiting on a busy 2-core machine (much faster)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield


def _chat(i: int) -> dict:
    label = "positive" if i % 2 else "negative"
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"review {i}: {sentiment_rows(1, i)[0]['text']}"},
            {"role": "assistant", "content": label},
        ]
    }


def _pair(i: int) -> dict:
    return {
        "prompt": f"Review film #{i}.",
        "chosen": "great film, loved it",
        "rejected": f"dull #{i}",
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, dict[str, Path]]:
    d = tmp_path_factory.mktemp("family-data")
    for split, n in (("pt-train", 4), ("pt-validation", 2)):
        (d / split).mkdir()
        for i in range(n):
            text = "The quick brown fox jumps over the lazy dog. " * (3 + i)
            (d / split / f"doc{i}.txt").write_text(f"{text}{split} {i}")
    return {
        "classification": {
            "train": write_csv(d / "train.csv", sentiment_rows(16)),
            "validation": write_csv(d / "validation.csv", sentiment_rows(6, offset=100)),
        },
        "sft": {
            "train": write_jsonl(d / "sft.jsonl", [_chat(i) for i in range(8)]),
            "validation": write_jsonl(d / "sft-val.jsonl", [_chat(i) for i in range(100, 103)]),
        },
        "pretrain": {"train": d / "pt-train", "validation": d / "pt-validation"},
        "preference": {
            "train": write_jsonl(d / "pref.jsonl", [_pair(i) for i in range(8)]),
            "validation": write_jsonl(d / "pref-val.jsonl", [_pair(i) for i in range(8, 10)]),
        },
    }


@pytest.fixture(scope="module")
def family_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {
        family: build_tiny_model(
            root / family,
            family,
            chat_template=NO_SYSTEM_TEMPLATE if family in NO_SYSTEM_ROLE else True,
            pad_token=family not in NO_PAD_TOKEN,
            layers=6 if family == "gemma3" else 2,  # 5 local layers and 1 global
        )
        for family in FAMILIES
    }


def _recipe(tmp: Path, model: Path, task: str, method: str, files: dict[str, Path]) -> Path:
    extra = {
        "sft": "sft: {generation_examples: 1, max_new_tokens: 4}\n",
        "preference": "preference: {generation_examples: 1, kl_examples: 1, max_new_tokens: 4}\n",
    }.get(task, "")
    path = tmp / "recipe.yaml"
    path.write_text(
        f"name: {model.name}-{task}-{method}\nbase_model: {model}\ntask: {task}\n"
        f"method: {method}\n"
        f"data: {{train: {files['train']}, validation: {files['validation']}}}\n"
        "lora: {r: 4, alpha: 8, dropout: 0.0}\n"
        "freeze: {trainable_layers: 1}\n"
        "training: {epochs: 1, batch_size: 4, learning_rate: 1.0e-2, logging_steps: 1, "
        "max_length: 64, seed: 0}\n"
        f"{extra}output_dir: {tmp / 'runs'}\n"
    )
    return path


def _serve(run) -> dict:
    """One request to the run's HTTP server, the kind its task serves."""
    model = run.path.name
    with TestClient(create_app(run, feedback_log=False)) as client:
        deadline = time.monotonic() + 60
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, "the server's model did not load"
            time.sleep(0.05)
        if run.meta["task"] == "classification":
            response = client.post("/v1/classify", json={"model": model, "input": ["great film"]})
        elif run.meta["task"] == "pretrain":
            body = {"model": model, "prompt": "The quick", "max_tokens": 3}
            response = client.post("/v1/completions", json=body)
        else:
            messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi"}]
            body = {"model": model, "messages": messages, "max_tokens": 3}
            response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text[:500]
    return response.json()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("family", FAMILIES)
def test_family_task_method_and_deploy_paths(family, task, method, family_models, data, tmp_path):
    run = tuneforge.train(_recipe(tmp_path, family_models[family], task, method, data[task]))

    # trained what the method says: everything, a top slice, or adapters on every linear
    params = run.meta["parameters"]
    assert 0 < params["trainable"] <= params["total"]
    if method == "full":
        assert params["trainable"] == params["total"]
    elif method == "lora":
        assert params["trainable"] < params["total"] / 2
    else:  # freeze: the top layer (and an untied output layer: most of a tiny model) trains
        assert params["trainable"] < params["total"]
    if method == "lora":
        config = json.loads((run.path / "adapter" / "adapter_config.json").read_text())
        targets = {name.rsplit(".", 1)[-1] for name in config["target_modules"]}
        assert set(FUSED.get(family, ("q_proj", "v_proj", "down_proj"))) <= targets

    # measured beside the untouched base, on the same validation set
    metrics = run.metrics
    assert set(metrics["base"]) == set(metrics["tuned"]) == {"validation"}
    losses = [e["loss"] for e in metrics["log_history"] if "loss" in e]
    assert losses and all(loss == loss and loss < 1e4 for loss in losses)

    # predict (a label or a completion per input)
    if task == "classification":
        [prediction] = run.predict(["great film, loved it"])
        assert prediction["label"] in {"positive", "negative"}
        assert abs(sum(prediction["probabilities"].values()) - 1) < 1e-4
    else:
        assert isinstance(run.generate("review 1: great film", max_new_tokens=3), str)
        if task != "pretrain":  # a chat with a system message, whatever the template allows
            chat = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi"}]
            assert isinstance(run.chat(chat, max_new_tokens=3), str)

    # eval --base
    evaluation = run.evaluate(data[task]["validation"], base=True, generate=1)
    assert evaluation["tuned"] and evaluation["base"] and evaluation["comparison"]

    # serve
    answer = _serve(run)
    assert answer.get("choices") or answer.get("data"), answer

    # merged export, loaded back and compared with the tuned model (logits and greedy tokens)
    exported = export_run(run, "merged", tmp_path / "merged")
    check = exported.verification
    assert check is not None and check["max_abs_logit_diff"] <= check["tolerance"]
    if task != "classification":
        assert check["greedy_match"]


def test_a_template_without_a_system_role_gets_the_system_prompt_in_the_first_user_turn(
    family_models,
):
    tokenizer = load_tokenizer(family_models["gemma3"])
    assert not accepts_system_role(tokenizer)
    text = render(
        tokenizer,
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi"}],
        add_generation_prompt=True,
    )
    assert text == f"<|im_start|>user\n{SYSTEM}\n\nhi<|im_end|>\n<|im_start|>model\n"
    assert accepts_system_role(load_tokenizer(family_models["llama"]))


def test_sft_on_a_template_without_a_system_role_says_so_and_trains_on_the_folded_chat(
    family_models, data, tmp_path, capsys
):
    run = tuneforge.train(_recipe(tmp_path, family_models["gemma3"], "sft", "lora", data["sft"]))
    assert "has no system role" in capsys.readouterr().err
    saved = load_tokenizer(run.path / "tokenizer")
    assert saved.chat_template == NO_SYSTEM_TEMPLATE  # the model's own template, kept


def test_a_model_without_a_pad_token_pads_with_eos(family_models):
    tokenizer = load_tokenizer(family_models["mistral"])
    assert tokenizer.pad_token == tokenizer.eos_token


def test_a_family_without_the_tasks_head_is_refused_before_the_data_is_read(data, tmp_path, capsys):
    """Cohere has a causal LM in transformers but no sequence-classification head."""
    from transformers import AutoModelForCausalLM, CohereConfig

    from tuneforge.errors import TuneforgeError
    from tuneforge.testing import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    config = CohereConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    folder = tmp_path / "tiny-cohere"
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    recipe = _recipe(tmp_path, folder, "classification", "lora", data["classification"])
    with pytest.raises(TuneforgeError, match="sequence-classification head.*'cohere'"):
        tuneforge.train(recipe)
    assert "Tokenizing" not in capsys.readouterr().err
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir())  # no run directory, not even a partial one
    # the same family trains a generating task
    (tmp_path / "sft").mkdir()
    sft = tuneforge.train(_recipe(tmp_path / "sft", folder, "sft", "lora", data["sft"]))
    assert sft.meta["task"] == "sft"


@pytest.fixture(scope="module")
def sft_runs(family_models, data, tmp_path_factory) -> dict:
    """One LoRA sft run per family, for the GGUF paths."""
    runs = {}
    for family in FAMILIES:
        tmp = tmp_path_factory.mktemp(f"sft-{family}")
        runs[family] = tuneforge.train(
            _recipe(tmp, family_models[family], "sft", "lora", data["sft"])
        )
    return runs


@pytest.mark.parametrize("quant", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("family", FAMILIES)
def test_gguf_export_of_every_family(family, quant, sft_runs, tmp_path):
    """`export --format gguf` writes llama.cpp's architecture for the family, and the file,
    loaded back by transformers' GGUF reader, gives the tuned model's logits and greedy tokens."""
    from gguf import GGUFReader

    result = export_run(sft_runs[family], "gguf", tmp_path / "gguf", quant=quant)
    check = result.verification
    assert check is not None and check["tokenizer_match"]
    if quant in ("f32", "f16"):  # q8_0 rounds weights to 8 bits: its logits move, measured below
        assert check["greedy_match"] and check["top1_agreement"] == 1.0
    assert check["max_abs_logit_diff"] <= (1e-4 if quant == "f32" else 0.05)
    [file] = (tmp_path / "gguf").glob("*.gguf")
    arch = GGUFReader(file).fields["general.architecture"]
    written = bytes(arch.parts[arch.data[0]]).decode()
    assert written == {"mistral": "llama", "gemma3": "gemma3"}.get(family, family)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_gguf_file_of_every_family_is_a_base_model(family, sft_runs, data, tmp_path):
    """A user's GGUF file of any family: converted once, then fine-tuned like a folder."""
    exported = export_run(sft_runs[family], "gguf", tmp_path / "gguf", quant="f32")
    [file] = exported.path.glob("*.gguf")
    run = tuneforge.train(_recipe(tmp_path, file, "classification", "lora", data["classification"]))
    assert run.meta["base_model"] == str(file)
    assert set(run.metrics["base"]) == set(run.metrics["tuned"]) == {"validation"}
