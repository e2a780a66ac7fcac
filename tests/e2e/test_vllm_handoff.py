"""On a GPU, serving at scale is handed to vLLM: a merged export (`tuneforge export RUN --format
merged`) is a plain Hugging Face folder (weights, config, tokenizer with the run's chat template)
that vLLM loads as is. Runs only where vllm and CUDA are installed; skipped elsewhere (the CPU
machines this suite usually runs on have neither).
"""

from __future__ import annotations

import pytest

vllm = pytest.importorskip("vllm")
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("vLLM needs a CUDA GPU", allow_module_level=True)

from test_serve import _recipes  # noqa: E402

import tuneforge  # noqa: E402
from tuneforge.data.chat import stop_token_ids  # noqa: E402
from tuneforge.deploy.export import export_run  # noqa: E402

PROMPTS = [
    [{"role": "user", "content": "alert 7: the quick brown fox malware"}],
    [{"role": "user", "content": "alert 8: the lazy dog phishing"}],
]


def test_a_merged_export_loads_in_vllm_and_answers_as_the_run(tmp_path, tiny_model):
    """Greedy chat answers from vLLM (its own kernels, fp32 for a like-for-like comparison)
    equal the run's own on the prompts the chat template renders."""
    run = tuneforge.train(_recipes(tmp_path, tiny_model)["sft"], ["training.max_steps=2"])
    folder = tmp_path / "merged"
    export_run(run, "merged", folder)
    llm = vllm.LLM(model=str(folder), dtype="float32", enforce_eager=True, seed=0)
    stops = stop_token_ids(run.tokenizer, run.meta["info"]["end_of_turn"])  # as the run ends
    params = vllm.SamplingParams(temperature=0, max_tokens=8, stop_token_ids=stops)
    tokenizer = llm.get_tokenizer()
    system = [{"role": "system", "content": run.recipe.sft.system_prompt}]
    prompts = [
        tokenizer.apply_chat_template(system + m, add_generation_prompt=True, tokenize=False)
        for m in PROMPTS
    ]
    outputs = llm.generate(prompts, params)
    for messages, out in zip(PROMPTS, outputs, strict=True):
        assert out.outputs[0].text.strip() == run.chat(messages, max_new_tokens=8)
