"""Timing and error helpers shared by the stages that choose by measurement and by the profiling harness.

Models and stages import this module, never wanopt.profiling: a stage that picks among options by timing them
(the attention kernel, the GELU epilogue) uses the same clock and the same error metric as the capture.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

# The warm-up/repeat rule of every timed unit: the median of >= 10 repeats, or >= 3 when one
# repeat takes over a second (a 40 s 720p step would otherwise hold the GPU for minutes per stage).
LONG_UNIT_MS = 1000.0


def repeats_for(first_ms: float, short: int = 10, long: int = 3) -> int:
    """How many timed repeats a unit gets, from the duration of one warm call."""
    return long if first_ms > LONG_UNIT_MS else short


def cuda_time_ms(fn: Callable[[], object], setup: Callable[[], object] | None = None, repeats: int = 10,
                 max_seconds: float | None = None) -> list[float]:
    """Time `fn` with CUDA events, `setup` (untimed) before each repeat. Stops early after max_seconds (but
    never under 3 repeats). Without CUDA (bookkeeping tests only) a host clock stands in."""
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


def time_once_ms(fn: Callable[[], object]) -> float:
    return cuda_time_ms(fn, repeats=1)[0]


def median_ms(fn, *args, n: int = 20) -> float:
    """Median of n CUDA-event timings of fn(*args), after 3 untimed calls (Triton's JIT, compile, cuBLASLt's
    heuristics run on the first calls)."""
    for _ in range(3):
        fn(*args)
    return statistics.median(cuda_time_ms(lambda: fn(*args), repeats=n))


def graph_time_ms(fn, calls: int = 20, repeats: int = 5) -> float:
    """GPU time of one fn() in ms, without the host's launch cost: `calls` calls recorded in one CUDA graph (after 3
    eager ones: compile, autotuning), the median of `repeats` replays divided by `calls`. For kernels that will run
    inside a CUDA graph, whose eager time between two events would be mostly launch latency."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    return statistics.median(cuda_time_ms(graph.replay, repeats=repeats)) / calls


def compile_seconds(warmup_ms: float, median_ms: float) -> float:
    """What the first call cost beyond a timed one (compile, autotune, graph capture), in seconds."""
    return max(0.0, warmup_ms - median_ms) / 1e3


def summarize(times_ms: list[float]) -> dict:
    return {"median": statistics.median(times_ms), "min": min(times_ms), "max": max(times_ms), "n": len(times_ms),
            "unit": "ms"}


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 error of a against the reference b, in float64."""
    return ((a.double() - b.double()).norm() / b.double().norm()).item()
