"""GGUF Q8_0 export of a run on the real embedded model (SmolLM2-135M-Instruct), read back by
transformers' GGUF loader: same greedy answer, close logits, and the tokenizer metadata llama.cpp
wrote in the original file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory) -> Path:
    import tuneforge

    tmp = tmp_path_factory.mktemp("embedded-export")
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Alert {i}: login failure from host {i}."},
                {"role": "assistant", "content": "Category: phishing"},
            ]
        }
        for i in range(6)
    ]
    for split, part in (("train", rows[:4]), ("validation", rows[4:])):
        (tmp / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    recipe = tmp / "recipe.yaml"
    recipe.write_text(
        f"""
name: smol-export
base_model: smollm2-135m
task: sft
data: {{train: {tmp / "train.jsonl"}, validation: {tmp / "validation.jsonl"}}}
lora: {{r: 4, alpha: 8, dropout: 0.0}}
training: {{max_steps: 1, batch_size: 2, learning_rate: 1.0e-3, max_length: 48, logging_steps: 1}}
baseline: {{enabled: false}}
sft: {{generation_examples: 0}}
output_dir: {tmp / "runs"}
"""
    )
    return tuneforge.train(recipe).path


def _greedy(model, ids: torch.Tensor, n: int, pad: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=pad
        )
    return out[0].tolist()


def test_q8_0_gguf_answers_like_the_fine_tuned_model(sft_run, tmp_path):
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import tuneforge
    from tuneforge.deploy.export import export_run
    from tuneforge.models import embedded_gguf_path

    # Checked independently below (the built-in check would load the file a second time).
    result = export_run(sft_run, "gguf", tmp_path / "gguf", quant="q8_0", verify=False)
    name = "smol-export-Q8_0.gguf"
    assert 100e6 < result.files[name] < 200e6  # 135M parameters at ~8.5 bits

    # llama.cpp's own metadata for this tokenizer, kept: pre-tokenizer, vocabulary, merges, types.
    ours = gguf.GGUFReader(tmp_path / "gguf" / name).fields
    original = gguf.GGUFReader(embedded_gguf_path("smollm2-135m")).fields
    for key in (
        "tokenizer.ggml.pre",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.chat_template",
        "llama.rope.freq_base",
        "llama.attention.head_count_kv",
        "general.license",
    ):
        assert ours[key].contents() == original[key].contents(), key

    run = tuneforge.load_run(sft_run)
    model = AutoModelForCausalLM.from_pretrained(
        tmp_path / "gguf", gguf_file=name, dtype=torch.float32
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "gguf", gguf_file=name)
    ids = run.tokenizer.apply_chat_template(
        QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    ids = ids["input_ids"]
    assert (
        tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, return_dict=True)[
            "input_ids"
        ]
        == ids[0].tolist()
    )

    want = _greedy(run.model, ids, 12, run.tokenizer.pad_token_id)
    got = _greedy(model, ids, 12, run.tokenizer.pad_token_id)
    assert got == want
    answer = run.tokenizer.decode(got[ids.shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer
    with torch.no_grad():
        reference = run.model(input_ids=torch.tensor([want])).logits
        logits = model(input_ids=torch.tensor([want])).logits
    assert float((logits - reference).abs().max() / reference.abs().max()) < 0.05
    assert float((logits.argmax(-1) == reference.argmax(-1)).float().mean()) > 0.9
