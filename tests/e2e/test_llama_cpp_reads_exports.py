"""llama.cpp itself reads tuneforge's GGUF files: greedy text equal to transformers' (f32, f16),
and the q8_0 files load and generate.

Runs where a llama.cpp `llama-simple` binary is named by TUNEFORGE_LLAMA_SIMPLE (built from
llama.cpp's sources: `cmake -B build && cmake --build build --target llama-simple`); skipped
elsewhere, CI included (no llama.cpp wheel installs without compiling it). The round trip through
transformers' GGUF reader (tests/unit/test_gguf_families.py) runs everywhere; this is the check
that the program users deploy with agrees.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from tuneforge.deploy.gguf import write_gguf
from tuneforge.models import load_causal_lm, load_tokenizer
from tuneforge.testing import FAMILIES, build_tiny_model

BINARY = os.environ.get("TUNEFORGE_LLAMA_SIMPLE")
pytestmark = pytest.mark.skipif(
    not BINARY or not Path(BINARY).is_file(),
    reason="set TUNEFORGE_LLAMA_SIMPLE to a llama.cpp llama-simple binary",
)
PROMPTS = ("The film was wonderful", "Security alert: failed login")
NEW_TOKENS = 12


def _llama_cpp(path: Path, prompt: str) -> str:
    """llama-simple's greedy continuation of `prompt` (it prints the prompt, then the tokens)."""
    binary = Path(BINARY)
    env = {**os.environ, "LD_LIBRARY_PATH": str(binary.parent), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [str(binary), "-m", str(path), "-n", str(NEW_TOKENS), prompt],
        capture_output=True,
        text=True,
        errors="replace",
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.rstrip("\n")


@pytest.mark.parametrize("quant", ["f32", "f16"])
@pytest.mark.parametrize("family", FAMILIES)
def test_llama_cpp_continues_like_transformers(family, quant, tmp_path):
    folder = build_tiny_model(tmp_path / family, family, layers=6 if family == "gemma3" else 2)
    model, tokenizer = load_causal_lm(folder).eval(), load_tokenizer(folder)
    # not "phi3": llama.cpp keys Phi-3 token attributes on the model's name and expects a
    # SentencePiece vocabulary (</s>, <unk>) that the tiny byte-level tokenizer lacks
    path = tmp_path / f"tiny-{quant}.gguf"
    write_gguf(model, tokenizer, path, quant=quant, name=f"tiny {family[:3]}")
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(
                **ids,
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        ours = tokenizer.decode(out[0, ids["input_ids"].shape[1] :])
        assert _llama_cpp(path, prompt) == prompt + ours


@pytest.mark.parametrize("family", FAMILIES)
def test_llama_cpp_runs_the_q8_0_file(family, tmp_path):
    """q8_0 rounds weights (and llama.cpp its activations) to 8 bits: the text may part from
    fp32's after a few tokens (as in transformers' reading of the same file), so this checks that
    llama.cpp loads the file and continues the prompt."""
    folder = build_tiny_model(tmp_path / family, family, layers=6 if family == "gemma3" else 2)
    path = tmp_path / "tiny-q8_0.gguf"
    model, tokenizer = load_causal_lm(folder), load_tokenizer(folder)
    write_gguf(model, tokenizer, path, quant="q8_0", name=f"tiny {family[:3]}")
    text = _llama_cpp(path, PROMPTS[0])
    assert text.startswith(PROMPTS[0]) and len(text) > len(PROMPTS[0])
