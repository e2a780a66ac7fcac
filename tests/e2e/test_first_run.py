"""The first run on a fresh machine: an empty model cache, several processes, interruptions.

Seen on a clean clone (issue 15): `tuneforge demo` (training.processes: auto = 2) converted the
embedded GGUF in both training processes at once; rank 1's `save_pretrained` wrote only the
tokenizer (transformers saves weights on rank 0 only), its folder won the rename, and every later
command failed on a cache entry without config.json. And two `tuneforge train` of one recipe in
the same second collided on the run id. These tests start from an empty TUNEFORGE_HOME with a
GGUF base model (the tiny Llama written as GGUF), as the embedded model is on a new machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import assert_user_error, sentiment_rows, write_csv, write_recipe


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, tiny_model) -> Path:
    from tuneforge.deploy.gguf import write_gguf
    from tuneforge.models import load_causal_lm, load_tokenizer

    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    model, tokenizer = load_causal_lm(tiny_model), load_tokenizer(tiny_model)
    write_gguf(model, tokenizer, path, quant="f32", name="tiny", eot="<|im_end|>")
    return path


@pytest.fixture
def empty_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("TUNEFORGE_HOME", str(home))
    monkeypatch.setenv("TUNEFORGE_REGISTRY", str(tmp_path / "registry.sqlite"))
    return home


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1", **extra}


def _recipe(tmp_path: Path, base_model: Path, processes: int = 1) -> Path:
    train = write_csv(tmp_path / "train.csv", sentiment_rows(16))
    validation = write_csv(tmp_path / "validation.csv", sentiment_rows(4, offset=100))
    return write_recipe(
        tmp_path / "recipe.yaml",
        f"""
name: first
base_model: {base_model}
task: classification
data: {{train: {train}, validation: {validation}}}
lora: {{r: 4, alpha: 8, dropout: 0.0}}
training: {{max_steps: 2, batch_size: 4, processes: {processes}, learning_rate: 1.0e-2}}
data_checks: {{leakage: 'off', duplicates: 'off'}}
output_dir: {tmp_path / "runs"}
""",
    )


def _cache_entries(home: Path) -> list[Path]:
    return [p for p in (home / "models").iterdir() if not p.name.startswith(".")]


def _train(recipe: Path, cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tuneforge.cli", "train", str(recipe), *args],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_process_training_from_an_empty_cache(tmp_path, empty_home, tiny_gguf):
    from tuneforge.models import cached_conversion

    recipe = _recipe(tmp_path, tiny_gguf, processes=2)
    proc = _train(recipe, tmp_path)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-4000:]
    assert "Traceback" not in err
    assert "Training in 2 processes" in out + err
    finished = [p for p in (tmp_path / "runs").iterdir()]
    assert len(finished) == 1 and not finished[0].name.startswith("."), finished
    assert (finished[0] / "metrics.json").is_file()
    [entry] = _cache_entries(empty_home)
    assert cached_conversion(entry)
    assert {"config.json", "model.safetensors"} <= {p.name for p in entry.iterdir()}
    assert not list((empty_home / "models").glob(".*.tmp-*"))  # no leftovers


def test_concurrent_conversions_make_one_complete_entry(tmp_path, empty_home, tiny_gguf):
    """Four processes resolve the same GGUF at once: one converts, the others wait for it."""
    code = (
        "import sys; from tuneforge.models import resolve_base_model; "
        "print(resolve_base_model(sys.argv[1]).path)"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tiny_gguf)],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outputs]
    paths = {out.strip() for out, _ in outputs}
    assert len(paths) == 1
    manifest = json.loads((Path(paths.pop()) / "tuneforge_source.json").read_text())
    assert "model.safetensors" in manifest["files"] and "config.json" in manifest["files"]
    conversions = sum("Converting" in err for _, err in outputs)
    assert conversions == 1, [err[-500:] for _, err in outputs]


# Dies at the worst moment: every file written but the manifest, as a kill -9 there would leave it.
KILLED_MIDWAY = """
import os, signal, sys
import tuneforge.models as models
def die(folder, manifest):
    os.kill(os.getpid(), signal.SIGKILL)
models.write_manifest = die
models.resolve_base_model(sys.argv[1])
"""


def test_a_conversion_killed_midway_is_rebuilt_by_the_next_command(tmp_path, empty_home, tiny_gguf):
    from tuneforge.models import cached_conversion, resolve_base_model

    killed = subprocess.run(
        [sys.executable, "-c", KILLED_MIDWAY, str(tiny_gguf)], env=_env(), capture_output=True
    )
    assert killed.returncode == -9
    leftovers = list((empty_home / "models").glob(".*.tmp-*"))
    assert leftovers and not _cache_entries(empty_home)  # half-written, under its temporary name

    recipe = _recipe(tmp_path, tiny_gguf)
    proc = subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", "data", "check", str(recipe)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Converting" in proc.stderr + proc.stdout
    # piped: the conversion is one line, not the GGUF reader's bar (seen on a first run's log)
    assert "de-quantizing" not in proc.stderr and "\r" not in proc.stderr
    [entry] = _cache_entries(empty_home)
    assert cached_conversion(entry)
    assert not list((empty_home / "models").glob(".*.tmp-*"))  # the leftover was cleared
    assert resolve_base_model(str(tiny_gguf)).path == entry


@pytest.mark.parametrize("damage", ["only_tokenizer", "truncated_weights", "old_manifest"])
def test_a_damaged_cache_entry_is_rebuilt_not_trusted(empty_home, tiny_gguf, damage):
    from tuneforge.models import MANIFEST, cached_conversion, resolve_base_model

    entry = resolve_base_model(str(tiny_gguf)).path
    if damage == "only_tokenizer":  # what the two-process race left behind
        (entry / "config.json").unlink()
        (entry / "model.safetensors").unlink()
        (entry / MANIFEST).write_text('{"gguf": "x"}')
    elif damage == "truncated_weights":
        with (entry / "model.safetensors").open("r+b") as f:
            f.truncate(100)
    else:  # written by an earlier tuneforge, without the file list: not proof of completeness
        (entry / MANIFEST).write_text(json.dumps({"gguf": str(tiny_gguf), "seconds": 1.0}))
    assert not cached_conversion(entry)
    again = resolve_base_model(str(tiny_gguf)).path
    assert again == entry and cached_conversion(entry)
    from tuneforge.models import load_causal_lm

    load_causal_lm(entry)  # loads: config and weights are back


def test_a_broken_gguf_is_one_clear_error_and_no_run_directory(tmp_path, empty_home):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    recipe = _recipe(tmp_path, bad)
    proc = subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", "train", str(recipe)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_user_error(proc, "cannot read GGUF file", str(bad))
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())
    assert not _cache_entries(empty_home)
    assert not list((empty_home / "models").glob(".*.tmp-*"))


def test_run_ids_are_unique_when_runs_start_in_the_same_second(tmp_path, monkeypatch):
    from tuneforge.runs import directory as rundir

    class Frozen(rundir.datetime):  # every run starts in the same second
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 12, 4, 16, 53, 11)

    monkeypatch.setattr(rundir, "datetime", Frozen)
    out = tmp_path / "runs"
    made: list[rundir.RunDir] = []
    start = threading.Barrier(8)

    def create():
        start.wait()
        made.append(rundir.RunDir.create(out, "par"))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    names = sorted(r.final.name for r in made)
    assert len(set(names)) == 8
    assert names[0] == "par-20261204-165311" and "par-20261204-165311-8" in names
    assert all(r.path.is_dir() for r in made)


def test_two_trainings_of_one_recipe_started_together_both_finish(
    tmp_path, tiny_model, monkeypatch
):
    monkeypatch.setenv("TUNEFORGE_REGISTRY", str(tmp_path / "registry.sqlite"))
    recipe = _recipe(tmp_path, tiny_model)
    procs = [_train(recipe, tmp_path, "--set", "baseline.enabled=false") for _ in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-3000:] for _, err in results]
    finished = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(finished) == 2 and not any(n.startswith(".") for n in finished), finished


def test_any_rank_may_convert(empty_home, tiny_gguf, monkeypatch):
    """Under torch.distributed, transformers saves weights on rank 0 only; the rank that gets the
    conversion lock may be another one, and must still write a complete folder."""
    from transformers.distributed import mixin

    from tuneforge.models import cached_conversion, resolve_base_model

    monkeypatch.setattr(mixin, "_is_torch_distributed_initialized", lambda: True)
    monkeypatch.setattr(mixin, "_get_torch_distributed_rank", lambda: 1)
    entry = resolve_base_model(str(tiny_gguf)).path
    assert cached_conversion(entry)
    assert (entry / "model.safetensors").is_file() and (entry / "config.json").is_file()
