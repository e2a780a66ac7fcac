"""Does this CPU compute bf16 natively, and is it faster there? Detected, then measured.

A CPU with AVX512-BF16 (AMD Zen 4, Intel Cooper Lake and later) or AMX-BF16 (Intel Sapphire
Rapids and later) multiplies bf16 matrices in hardware: measured on this project's 2-core AMD
EPYC (AVX512-BF16), a 2048x2048 matmul ran at 406 GFLOP/s in bf16 against 171 in fp32 (2.4x);
an AMX Xeon reaches 6.7x. A CPU without either emulates bf16 through fp32 conversions, and
mixed precision there was measured about 36x slower than fp32.

`precision: auto` picks bf16 on a CPU only when both hold: torch reports a native bf16
instruction set (:func:`capability`), and a short matmul measurement (about 0.05 s, once per process
tree) finds bf16 at least :data:`MIN_SPEEDUP` times fp32's throughput. `tuneforge plan` shows
both. The measurement is handed to training processes this one starts (an environment variable),
so every rank of a multi-process run takes the same decision.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass

import torch

ENV = "TUNEFORGE_CPU_BF16_SPEEDUP"  # the measured ratio, shared with launched processes
MIN_SPEEDUP = 1.3  # bf16 must beat fp32 by this much in the measurement to be picked
_SIZE = 512  # the measured square matmul: big enough for the vector units, ~10 ms in fp32


@dataclass(frozen=True)
class CpuBf16:
    """What this CPU offers for bf16: the native instruction set (None without one) and the
    measured bf16/fp32 matmul throughput ratio (None where not measured: no native bf16)."""

    cpu: str
    isa: str | None  # "AMX-BF16" | "AVX512-BF16" | None
    speedup: float | None

    @property
    def native(self) -> bool:
        return self.isa is not None

    @property
    def usable(self) -> bool:
        """Native and measured faster: what `precision: auto` needs to pick bf16 on a CPU."""
        return self.native and self.speedup is not None and self.speedup >= MIN_SPEEDUP

    def describe(self) -> str:
        if not self.native:
            return f"{self.cpu}: no native bf16 (neither AVX512-BF16 nor AMX-BF16)"
        return (
            f"{self.cpu}: native bf16 ({self.isa}), bf16 matmul measured "
            f"{self.speedup:.1f}x fp32's throughput"
        )


def capability() -> dict:
    """torch's report of the CPU (`cpu_name`, `avx512_bf16`, `amx_bf16`, ...); {} where this torch
    build does not report it."""
    report = getattr(getattr(torch._C, "_cpu", None), "_get_cpu_capability", None)
    try:
        return dict(report()) if report is not None else {}
    except RuntimeError:
        return {}


def native_isa(report: dict) -> str | None:
    """The best native bf16 instruction set in a capability report, or None."""
    if report.get("amx_bf16"):
        return "AMX-BF16"
    if report.get("avx512_bf16"):
        return "AVX512-BF16"
    return None


@functools.cache
def detect() -> CpuBf16:
    """This CPU's bf16 capability, measured once per process (and taken from the environment in
    processes that a measuring one started)."""
    report = capability()
    cpu = str(report.get("cpu_name") or "this CPU")
    isa = native_isa(report)
    if isa is None:
        return CpuBf16(cpu, None, None)
    shared = os.environ.get(ENV)
    try:
        speedup = float(shared) if shared else measure()
    except ValueError:
        speedup = measure()
    os.environ[ENV] = f"{speedup:.3f}"
    return CpuBf16(cpu, isa, speedup)


def measure(size: int = _SIZE, repeats: int = 7) -> float:
    """bf16 matmul throughput over fp32's, on this process's threads: best of `repeats` each,
    the two dtypes interleaved so that a moment of contention from another process slows both
    alike (measured back to back, one dtype's batch alone could land in it)."""
    pairs = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
        a @ b  # warm-up: the kernel's first call picks its path
        pairs[dtype] = (a, b)
    best = dict.fromkeys(pairs, float("inf"))
    for _ in range(repeats):
        for dtype, (a, b) in pairs.items():
            start = time.perf_counter()
            a @ b
            best[dtype] = min(best[dtype], time.perf_counter() - start)
    return best[torch.float32] / best[torch.bfloat16]
