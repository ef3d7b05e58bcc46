"""Timing and environment helpers for the capture command: CUDA events, ceilings, versions."""

from __future__ import annotations

import datetime
import hashlib
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

import torch


def cuda_time_ms(fn: Callable[[], object], setup: Callable[[], object] | None = None, repeats: int = 10,
                 max_seconds: float | None = None) -> list[float]:
    """Time `fn` with CUDA events, `setup` (untimed) before each repeat. Stops early after max_seconds (but
    never under 3 repeats). Without CUDA (tests only) a host clock stands in."""
    times, spent = [], 0.0
    for _ in range(repeats):
        if setup is not None:
            setup()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        spent += times[-1] / 1e3
        if max_seconds is not None and spent > max_seconds and len(times) >= 3:
            break
    return times


def median_ms(fn, *args, n: int = 20) -> float:
    """Median of n CUDA-event timings of fn(*args), after 3 untimed calls (Triton's JIT, compile, cuBLASLt's
    heuristics run on the first calls)."""
    for _ in range(3):
        fn(*args)
    return statistics.median(cuda_time_ms(lambda: fn(*args), repeats=n))


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 error of a against the reference b, in float64."""
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def summarize(times_ms: list[float]) -> dict:
    return {"median": statistics.median(times_ms), "min": min(times_ms), "max": max(times_ms), "n": len(times_ms),
            "unit": "ms"}


def gemm_ceiling_tflops(n: int = 8192, repeats: int = 10) -> float:
    """bf16 n×n×n matmul on random data, median TFLOP/s."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    ms = statistics.median(cuda_time_ms(lambda: a @ b, repeats=repeats))
    return 2 * n**3 / (ms / 1e3) / 1e12


def attention_ceilings_tflops(heads: int, q_len: int, k_len: int, head_dim: int = 128,
                              backends=("flash", "cudnn", "efficient", "flex", "fa4"), repeats: int = 5) -> dict:
    """Non-causal bf16 attention [1, heads, L, head_dim] per available kernel, median TFLOP/s (None: unavailable)."""
    from ..models.layers import attention

    q = torch.randn(1, q_len, heads, head_dim, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, k_len, heads, head_dim, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    flop = 4.0 * heads * q_len * k_len * head_dim
    out = {}
    for backend in backends:
        try:
            def fn(backend=backend):
                return attention(q, k, v, backend)
            for _ in range(2):
                fn()
            # short kernels: time a batch of back-to-back calls, so the host's launch path is not inside the window
            once = statistics.median(cuda_time_ms(fn, repeats=3))
            batch = max(1, int(20.0 / max(once, 1e-3)))

            def many(fn=fn, batch=batch):
                for _ in range(batch):
                    fn()
            ms = statistics.median(cuda_time_ms(many, repeats=repeats)) / batch
            out[backend] = flop / (ms / 1e3) / 1e12
        except Exception as exc:  # a kernel that does not support this shape or GPU: record why
            out[backend] = None
            out[f"{backend}_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return out


def environment() -> dict:
    """Device and software versions for the manifest."""
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(device=props.name, device_memory_gib=round(props.total_memory / 2**30, 1),
                   multiprocessors=props.multi_processor_count)
        env["driver"] = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    for pkg in ("diffusers", "transformers"):
        try:
            env[pkg] = __import__(pkg).__version__
        except ImportError:
            env[pkg] = None
    # the device machine gets a copy of the working tree without .git: the caller passes the commit in
    env["git_commit"] = os.environ.get("WANOPT_GIT_COMMIT") or _run(["git", "rev-parse", "--short", "HEAD"],
                                                                     cwd=Path(__file__).resolve().parents[2])
    env["inductor_caches"] = "disabled" if os.environ.get("TORCHINDUCTOR_FORCE_DISABLE_CACHES") == "1" else "default"
    return env


def _run(cmd, cwd=None) -> str | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=cwd).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def gib(n_bytes: int | float) -> float:
    return round(n_bytes / 2**30, 2)
