"""Benchmark: `tuneforge serve` under concurrent load against a plain transformers loop.

    .venv/bin/python bench/serve.py            # smollm2-135m: sentiment + alert-triage runs
    .venv/bin/python bench/serve.py --quick    # tiny random model, a few requests (CI smoke)
    .venv/bin/python bench/serve.py --classify-run runs/movie-sentiment-... --chat-run runs/...

The server only serves runs (it needs the run's tokenizer, labels and chat settings), so unless
`--classify-run`/`--chat-run` are given the script first trains two throw-away runs on the
recipes' base model with `training.max_steps=2` (recipes/sentiment.yaml, recipes/alert_triage.yaml;
their weights barely move, which does not matter for speed) in a temporary folder.

For each run, in one process and one after the other (never at the same time, so neither steals
the other's CPU):
- the plain loop: the same model object `Run.load` gives (the one the server holds), driven by
  plain transformers calls: classify, one forward per request in sequence (what a naive Flask
  handler does) and forwards over batches of the run's batch size (offline, no latency); chat,
  `tokenizer.apply_chat_template` + `model.generate` per request in sequence, greedy;
- the real server, started as `tuneforge serve RUN --port 0` in a subprocess on loopback, driven by
  1, 8 and 32 concurrent clients (httpx, async) sending the same requests (chat: same messages,
  same max_tokens, temperature 0).

Every server answer is checked against the plain loop's answer to the same request (classify: the
label, and the largest probability difference; chat: the exact text); mismatches are counted and
printed. Latency is per request, send to full response (the client runs in this process, on the
same CPU as the server: at high concurrency it takes a little of it). Writes
bench/results/serve.json (or --output) and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "serve.json"
QUICK_RESULTS = ROOT / "bench" / "results" / "serve-quick.json"
CLASSIFY_RECIPE = ROOT / "recipes" / "sentiment.yaml"
CHAT_RECIPE = ROOT / "recipes" / "alert_triage.yaml"
CLASSIFY_TEXTS = ROOT / "examples" / "data" / "movie_reviews" / "test.csv"
CHAT_PROMPTS = ROOT / "examples" / "data" / "alert_triage" / "test.jsonl"

FULL = {"concurrency": [1, 8, 32], "classify_requests": 200, "chat_requests": 32, "max_tokens": 32}
QUICK = {"concurrency": [1, 4], "classify_requests": 8, "chat_requests": 4, "max_tokens": 8}
# chat: the server one request at a time, then batching 8 (--quick: only the default, 8)
GENERATION_BATCHES = {"full": [1, 8], "quick": [8]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny random model, a few requests")
    p.add_argument("--classify-run", type=Path, help="serve this classification run")
    p.add_argument("--chat-run", type=Path, help="serve this sft run")
    p.add_argument("--concurrency", type=_ints, help="clients at once, e.g. 1,8,32")
    p.add_argument("--classify-requests", type=int, help="requests per concurrency level")
    p.add_argument("--chat-requests", type=int, help="requests per concurrency level")
    p.add_argument("--max-tokens", type=int, help="chat: max_tokens of every request")
    p.add_argument("--threads", type=int, help="torch threads, here and in the server")
    p.add_argument(
        "--generation-batches",
        type=_ints,
        help="chat: one server arm per `tuneforge serve --generation-batch` value, in order "
        "(1: no batching); default 1,8 (--quick: 8)",
    )
    p.add_argument("--skip-classify", action="store_true", help="only the chat benchmark")
    p.add_argument(
        "--output",
        type=Path,
        help=f"default {RESULTS.relative_to(ROOT)} (--quick: {QUICK_RESULTS.relative_to(ROOT)})",
    )
    args = p.parse_args(argv)
    plan = {**(QUICK if args.quick else FULL)}
    for key in ("concurrency", "classify_requests", "chat_requests", "max_tokens"):
        if getattr(args, key) is not None:
            plan[key] = getattr(args, key)
    plan["generation_batches"] = (
        args.generation_batches or GENERATION_BATCHES["quick" if args.quick else "full"]
    )
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    threads = args.threads
    output = args.output or (QUICK_RESULTS if args.quick else RESULTS)

    with tempfile.TemporaryDirectory(prefix="tuneforge-bench-serve-") as tmp:
        workdir = Path(tmp)
        base = str(build_tiny(workdir)) if args.quick else None
        chat_run = args.chat_run or train(CHAT_RECIPE, workdir, base)
        cls_run = None
        if not args.skip_classify:
            cls_run = args.classify_run or train(CLASSIFY_RECIPE, workdir, base)
        texts = classify_texts(plan["classify_requests"])
        chats = chat_prompts(plan["chat_requests"])
        results: dict[str, Any] = {"meta": meta(plan, threads, args.quick, cls_run, chat_run)}
        if cls_run is not None:
            results["classify"] = bench_classify(cls_run, texts, plan, threads, workdir)
        results["chat"] = bench_chat(chat_run, chats, plan, threads, workdir)
    print_tables(results)
    write_json(output, results)
    print(f"\nwrote {output}")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


# --------------------------------------------------------------------------------------------------
# Runs and inputs


def build_tiny(workdir: Path) -> Path:
    from tuneforge.testing import build_tiny_llama

    return build_tiny_llama(workdir / "tiny-llama")


def train(recipe: Path, workdir: Path, base_model: str | None) -> Path:
    """A throw-away run of `recipe`: two training steps of 4 examples, no baseline or test
    scoring. The evaluation batch size stays the recipe's: it is the server's classify batch."""
    import yaml

    training = yaml.safe_load(recipe.read_text()).get("training", {})
    eval_batch = training.get("eval_batch_size") or training.get("batch_size", 16)
    out = workdir / "runs"
    sets = [
        "training.max_steps=2",
        "training.batch_size=4",
        f"training.eval_batch_size={eval_batch}",
        "data.test=null",
        "baseline.enabled=false",
        "sft.generation_examples=0",
        f"output_dir={out}",
        f"registry={workdir / 'registry.sqlite'}",  # the user's registry is left alone
    ]
    if base_model:
        sets.append(f"base_model={base_model}")
    log = workdir / f"train-{recipe.stem}.log"
    command = [sys.executable, "-m", "tuneforge.cli", "train", str(recipe)]
    command += [arg for s in sets for arg in ("--set", s)]
    print(f"== training a throw-away run: {recipe.relative_to(ROOT)} (2 steps)", flush=True)
    with log.open("w") as f:
        code = subprocess.run(command, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    runs = sorted(d for d in out.glob("*") if (d / "run.json").is_file()) if out.is_dir() else []
    name = _recipe_name(recipe)
    runs = [d for d in runs if d.name.startswith(f"{name}-")]
    if code != 0 or not runs:
        raise SystemExit(f"training {recipe} failed (exit {code}):\n{log.read_text()[-3000:]}")
    return runs[-1]


def _recipe_name(recipe: Path) -> str:
    import yaml

    return yaml.safe_load(recipe.read_text())["name"]


def classify_texts(n: int) -> list[str]:
    with CLASSIFY_TEXTS.open(newline="", encoding="utf-8") as f:
        texts = [row["text"] for row in csv.DictReader(f)]
    return [texts[i % len(texts)] for i in range(n)]


def chat_prompts(n: int) -> list[list[dict]]:
    """The test chats without their answers (some are two-turn follow-ups)."""
    from tuneforge.data.chat import without_answer

    lines = CHAT_PROMPTS.read_text(encoding="utf-8").splitlines()
    chats = [without_answer(json.loads(line)["messages"]) for line in lines if line.strip()]
    return [chats[i % len(chats)] for i in range(n)]


# --------------------------------------------------------------------------------------------------
# The plain transformers loop


def plain_classify(model, tokenizer, labels, texts, max_length: int) -> list[dict]:
    """One forward per text, in sequence: label, probabilities, latency."""
    import torch

    out = []
    for text in texts:
        t = time.perf_counter()
        enc = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
        with torch.inference_mode():
            probs = model(**enc).logits.float().softmax(-1)[0]
        out.append(_label(labels, probs) | {"latency": time.perf_counter() - t})
    return out


def plain_classify_batched(model, tokenizer, labels, texts, max_length: int, batch: int):
    """Forwards over `batch` texts at a time (padded), as an offline script would."""
    import torch

    out = []
    for i in range(0, len(texts), batch):
        enc = tokenizer(
            texts[i : i + batch],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        with torch.inference_mode():
            probs = model(**enc).logits.float().softmax(-1)
        out.extend(_label(labels, row) for row in probs)
    return out


def _label(labels: list[str], probs) -> dict:
    return {
        "label": labels[int(probs.argmax())],
        "probabilities": {lab: float(probs[i]) for i, lab in enumerate(labels)},
    }


def plain_chat(model, tokenizer, chats, stop_ids: list[int], max_tokens: int) -> list[dict]:
    """`model.generate` per chat, in sequence, greedy: text, new tokens, latency."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    out = []
    for messages in chats:
        t = time.perf_counter()
        enc = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.inference_mode():
            ids = model.generate(
                **enc,
                max_new_tokens=max_tokens,
                do_sample=False,
                eos_token_id=stop_ids,
                pad_token_id=pad,
            )
        new = ids[0, enc["input_ids"].shape[1] :].tolist()
        end = next((k for k, token in enumerate(new) if token in stop_ids), len(new))
        text = tokenizer.decode(new[:end], skip_special_tokens=True).strip()
        out.append({"text": text, "tokens": end, "latency": time.perf_counter() - t})
    return out


# --------------------------------------------------------------------------------------------------
# The server


class Server:
    """`tuneforge serve RUN --port 0` in a subprocess; its URL read from its first line."""

    def __init__(
        self, run: Path, workdir: Path, threads: int | None, args: list[str] | None = None
    ) -> None:
        self.log_path = workdir / f"serve-{run.name}{'-'.join(['', *(args or [])])}.log"
        self.log = self.log_path.open("w")
        env = {**os.environ, "COLUMNS": "300"}
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        command = [sys.executable, "-m", "tuneforge.cli", "serve", str(run), "--port", "0"]
        command += args or []
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.url = ""
        self.peak_rss_mb = 0.0
        self._sampling = True
        self._sampler = threading.Thread(target=self._sample_rss, daemon=True)
        self._sampler.start()

    def wait_ready(self, timeout: float = 600) -> dict:
        import httpx2 as httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited:\n{self.log_path.read_text()[-3000:]}")
            if not self.url:
                found = re.search(r" on (http://127\.0\.0\.1:\d+) ", self.log_path.read_text())
                self.url = found.group(1) if found else ""
            else:
                try:
                    r = httpx.get(f"{self.url}/ready", timeout=5)  # the model loaded
                    if r.status_code == 200:
                        return r.json()
                except httpx.TransportError:
                    pass
            time.sleep(0.2)
        raise SystemExit(f"the server was not ready in {timeout}s")

    def health(self) -> dict:
        import httpx2 as httpx

        return httpx.get(f"{self.url}/stats", timeout=30).json()  # model, counters

    def _sample_rss(self) -> None:
        import psutil

        try:
            proc = psutil.Process(self.proc.pid)
            while self._sampling and self.proc.poll() is None:
                self.peak_rss_mb = max(self.peak_rss_mb, proc.memory_info().rss / 2**20)
                time.sleep(0.05)
        except psutil.Error:
            pass

    def stop(self) -> None:
        self._sampling = False
        self.proc.terminate()  # graceful shutdown on SIGTERM
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@contextmanager
def served(run: Path, workdir: Path, threads: int | None, args: list[str] | None = None):
    server = Server(run, workdir, threads, args)
    try:
        yield server
    finally:
        server.stop()


async def _drive(url: str, path: str, bodies: list[dict], clients: int) -> tuple[float, list]:
    """Send every body with `clients` requests in flight at once; (wall seconds, results)."""
    import httpx2 as httpx

    results: list[dict] = [{} for _ in bodies]
    todo = iter(range(len(bodies)))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=3600, limits=limits) as client:

        async def worker() -> None:
            for i in todo:
                t = time.perf_counter()
                try:
                    r = await client.post(path, json=bodies[i])
                    status, body = r.status_code, r.json()
                except Exception as e:  # noqa: BLE001 - counted as a failed request
                    status, body = 0, {"error": f"{type(e).__name__}: {e}"}
                results[i] = {"status": status, "body": body, "latency": time.perf_counter() - t}

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - start
    return wall, results


def drive(url: str, path: str, bodies: list[dict], clients: int) -> tuple[float, list]:
    return asyncio.run(_drive(url, path, bodies, clients))


# --------------------------------------------------------------------------------------------------
# The two benchmarks


def bench_classify(run_dir: Path, texts: list[str], plan: dict, threads, workdir: Path) -> dict:
    from tuneforge.runs.run import Run

    print(f"== classify: {run_dir.name}, {len(texts)} requests of one text", flush=True)
    with served(run_dir, workdir, threads) as server:
        run = Run.load(run_dir)
        model, tokenizer, labels = run.model, run.tokenizer, run.labels
        max_length = run.recipe.training.max_length
        batch = run.recipe.training.eval_batch_size or run.recipe.training.batch_size
        server.wait_ready()

        plain_classify(model, tokenizer, labels, texts[:2], max_length)  # warm-up
        t = time.perf_counter()
        expected = plain_classify(model, tokenizer, labels, texts, max_length)
        latencies = [r["latency"] for r in expected]
        sequential = _summary(
            "transformers, forward per request", 1, time.perf_counter() - t, len(texts), latencies
        )
        t = time.perf_counter()
        batched_out = plain_classify_batched(model, tokenizer, labels, texts, max_length, batch)
        wall = time.perf_counter() - t
        batched = _summary(f"transformers, batches of {batch}", None, wall, len(texts), [])
        batched.update(_compare_labels(expected, batched_out))

        name = server.health()["model"]
        bodies = [{"model": name, "input": text} for text in texts]
        drive(server.url, "/v1/classify", bodies[:2], 1)  # warm-up
        levels = []
        for clients in plan["concurrency"]:
            before = server.health()["classify"]
            wall, results = drive(server.url, "/v1/classify", bodies, clients)
            after = server.health()["classify"]
            ok = [r for r in results if r["status"] == 200]
            got = [r["body"]["data"][0] if r["status"] == 200 else None for r in results]
            latencies = [r["latency"] for r in ok]
            level = _summary("tuneforge serve", clients, wall, len(texts), latencies)
            level |= _failures(results)
            level |= _compare_labels(expected, got)
            forwards, items = after["batches"] - before["batches"], after["items"] - before["items"]
            level |= {"forward_passes": forwards, "texts_forwarded": items}
            level["mean_batch"] = round(items / forwards, 2) if forwards else 0
            levels.append(level)
            print(f"   {clients:>3} clients: {level['requests_per_s']:.1f} req/s", flush=True)
    return _result(run_dir, len(texts), [sequential, batched], levels, server)


def bench_chat(run_dir: Path, chats: list[list[dict]], plan: dict, threads, workdir: Path) -> dict:
    """The plain loop, then the server once per `plan["generation_batches"]` setting (1: one
    request at a time, the server before dynamic batching), one after the other."""
    from tuneforge.data.chat import stop_token_ids, with_system_prompt
    from tuneforge.runs.run import Run

    max_tokens = plan["max_tokens"]
    print(f"== chat: {run_dir.name}, {len(chats)} requests, max_tokens={max_tokens}", flush=True)
    run = Run.load(run_dir)
    model, tokenizer = run.model, run.tokenizer
    stop_ids = stop_token_ids(tokenizer, run.meta["info"].get("end_of_turn"))
    system = run.recipe.sft.system_prompt  # the server adds it; so must the plain loop
    plain_chat(model, tokenizer, [with_system_prompt(chats[0], system)], stop_ids, 2)
    t = time.perf_counter()
    expected = plain_chat(
        model, tokenizer, [with_system_prompt(c, system) for c in chats], stop_ids, max_tokens
    )
    sequential = _summary(
        "transformers, generate per request",
        1,
        time.perf_counter() - t,
        len(chats),
        [r["latency"] for r in expected],
        tokens=sum(r["tokens"] for r in expected),
    )
    levels, peak = [], 0.0
    for batch in plan["generation_batches"]:
        arm = "tuneforge serve, one at a time" if batch == 1 else f"tuneforge serve, batch {batch}"
        args = ["--generation-batch", str(batch)]
        with served(run_dir, workdir, threads, args) as server:
            server.wait_ready()
            name = server.health()["model"]
            bodies = [
                {"model": name, "messages": c, "max_tokens": max_tokens, "temperature": 0}
                for c in chats
            ]
            warm_up = [{**bodies[0], "max_tokens": 2}]
            drive(server.url, "/v1/chat/completions", warm_up, 1)
            for clients in plan["concurrency"]:
                wall, results = drive(server.url, "/v1/chat/completions", bodies, clients)
                ok = [r for r in results if r["status"] == 200]
                tokens = sum(r["body"]["usage"]["completion_tokens"] for r in ok)
                latencies = [r["latency"] for r in ok]
                level = _summary(arm, clients, wall, len(chats), latencies, tokens)
                level |= _failures(results)
                got = [
                    r["body"]["choices"][0]["message"]["content"] if r["status"] == 200 else None
                    for r in results
                ]
                level |= _compare_texts(expected, got)
                level["generation_batch"] = batch
                levels.append(level)
                print(
                    f"   {arm}, {clients:>3} clients: {level['requests_per_s']:.2f} req/s, "
                    f"p95 {level['p95_ms'] / 1000:.1f} s",
                    flush=True,
                )
        peak = max(peak, server.peak_rss_mb)
    result = _result(run_dir, len(chats), [sequential], levels, server, max_tokens=max_tokens)
    result["server_peak_rss_mb"] = round(peak, 1)
    return result


def _result(run_dir: Path, requests: int, plain: list, levels: list, server: Server, **extra):
    return {
        "run": str(run_dir),
        "requests": requests,
        **extra,
        "plain": plain,
        "server": levels,
        "server_peak_rss_mb": round(server.peak_rss_mb, 1),
    }


# --------------------------------------------------------------------------------------------------
# Figures


def _summary(
    arm: str,
    clients: int | None,
    wall: float,
    requests: int,
    latencies: list[float],
    tokens: int | None = None,
) -> dict:
    """Throughput over the wall time of all requests; latency percentiles of the answered ones."""
    import numpy as np

    lat = np.array(latencies) * 1000
    out = {
        "arm": arm,
        "clients": clients,
        "wall_s": round(wall, 3),
        "requests_per_s": round(requests / wall, 3),
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
        "p95_ms": round(float(np.percentile(lat, 95)), 1) if len(lat) else None,
        "mean_ms": round(float(lat.mean()), 1) if len(lat) else None,
        "max_ms": round(float(lat.max()), 1) if len(lat) else None,
    }
    if tokens is not None:
        out["generated_tokens"] = tokens
        out["tokens_per_s"] = round(tokens / wall, 2)
    return out


def _failures(results: list[dict]) -> dict:
    failed = [
        {"index": i, "status": r["status"], "body": r["body"]}
        for i, r in enumerate(results)
        if r["status"] != 200
    ]
    return {"succeeded": len(results) - len(failed), "failed": len(failed), "failures": failed}


def _compare_labels(expected: list[dict], got: list[dict | None]) -> dict:
    """Label mismatches against the plain sequential forward, and the largest probability gap."""
    mismatches, gap = [], 0.0
    for i, (e, g) in enumerate(zip(expected, got, strict=True)):
        if g is None:
            continue
        gap = max(gap, max(abs(p - g["probabilities"][k]) for k, p in e["probabilities"].items()))
        if g["label"] != e["label"]:
            mismatches.append({"index": i, "expected": e["label"], "got": g["label"]})
    return {"mismatches": mismatches, "max_abs_prob_diff": gap}


def _compare_texts(expected: list[dict], got: list[str | None]) -> dict:
    mismatches = [
        {"index": i, "expected": e["text"], "got": g}
        for i, (e, g) in enumerate(zip(expected, got, strict=True))
        if g is not None and g != e["text"]
    ]
    return {"mismatches": mismatches}


def meta(plan: dict, threads, quick: bool, cls_run: Path | None, chat_run: Path) -> dict[str, Any]:
    import torch
    import transformers

    import tuneforge
    from tuneforge.runs.run import Run

    return {
        "quick": quick,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "base_model": Run.load(cls_run).recipe.base_model if cls_run else None,
        "chat_base_model": Run.load(chat_run).recipe.base_model,
        "plan": plan,
        "torch_threads": threads or torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tuneforge": getattr(tuneforge, "__version__", "dev"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


def print_tables(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=140)

    def fmt(value, spec: str = "{:.1f}") -> str:
        return "-" if value is None else spec.format(value)

    for task, title in (("classify", "POST /v1/classify"), ("chat", "POST /v1/chat/completions")):
        if task not in results:
            continue
        r = results[task]
        extra = f", max_tokens={r['max_tokens']}, greedy" if task == "chat" else ", one text each"
        table = Table(title=f"{title}: {r['requests']} requests{extra}")
        third = "tokens/s" if task == "chat" else "texts/pass"  # classify: mean micro-batch
        for column in ("arm", "clients", "req/s", third, "p50 ms", "p95 ms", "ok", "mismatch"):
            table.add_column(column, justify="left" if column == "arm" else "right")
        for row in [*r["plain"], *r["server"]]:
            table.add_row(
                row["arm"],
                fmt(row["clients"], "{}"),
                fmt(row["requests_per_s"], "{:.2f}"),
                fmt(row.get("tokens_per_s" if task == "chat" else "mean_batch")),
                fmt(row["p50_ms"]),
                fmt(row["p95_ms"]),
                fmt(row.get("succeeded", r["requests"]), "{}"),
                fmt(len(row["mismatches"]), "{}") if "mismatches" in row else "ref",
            )
        console.print(table)
        for row in r["server"] + r["plain"]:
            for m in row.get("mismatches", []):
                console.print(
                    f"  mismatch ({row['arm']}, clients={row['clients']}) request {m['index']}: "
                    f"expected {m['expected']!r}, got {m['got']!r}",
                    markup=False,
                )
            for f in row.get("failures", []):
                console.print(
                    f"  failed ({row['arm']}, clients={row['clients']}) request {f['index']}: "
                    f"status {f['status']}: {json.dumps(f['body'])[:300]}",
                    markup=False,
                )


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    main()
