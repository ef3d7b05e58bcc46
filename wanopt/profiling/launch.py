"""A capture under torchrun, started from Python: what CI and the sequence-parallel notebook run live on the CPU
(the tiny workload as a gloo world of CPU processes), and what a user types on the GPU machine.

    torchrun_command("t2v-a14b-720p-sp2", "08_cuda_graphs,09_sequence_parallel")   # the command, as a list
    run_capture("tiny-t2v-sp2", "04_dtype_hygiene,09_sequence_parallel", out)      # run it, check it ended well
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ..configs import get_workload
from .records import ROOT


def torchrun_command(workload: str, stages: str, out="traces", allow_cpu: bool = False,
                     nproc: int | None = None) -> list[str]:
    """`python -m torch.distributed.run --standalone --nproc-per-node N -m wanopt capture ...` (torchrun's module
    form; --standalone picks a free port on this host). N is the workload's world size unless given."""
    n = get_workload(workload).world_size if nproc is None else nproc
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", "-m", "wanopt",
            "capture", "--workload", workload, "--stages", stages, "--out", str(out)] + \
        (["--allow-cpu"] if allow_cpu else [])


def run_capture(workload: str, stages: str, out, allow_cpu: bool = True, nproc: int | None = None,
                timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the capture under torchrun (from the repository root, output captured) and return the finished process;
    a RuntimeError with the end of its output if it failed."""
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run(torchrun_command(workload, stages, Path(out).resolve(), allow_cpu, nproc), cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"the torchrun capture of {workload} failed (exit {done.returncode}):\n"
                           + (done.stdout + done.stderr)[-4000:])
    return done


def tiny_sequence_parallel_check(stages: str = "08_cuda_graphs,09_sequence_parallel", out=None) -> "pd.DataFrame":
    """Live, on the CPU: the tiny sequence-parallel workload captured under torchrun as two gloo processes (into
    `out`, a temporary folder by default), and its sequence-parallel stage's error against the single-process
    stage of the same run, with the tolerance. Errors to one significant digit (CPUs differ in the last bits)."""
    import json
    import tempfile

    import pandas as pd

    from .report import sci

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(out or tmp)
        run_capture("tiny-t2v-sp2", stages, folder)
        sp = stages.split(",")[-1]
        m = json.loads((folder / "tiny-t2v-sp2" / sp / "manifest.json").read_text())
    e = m["error_vs_single_gpu"]
    return pd.DataFrame([{"stage": sp, "processes": m["world_size"], "backend": m["backend"],
                          "against": f"{e['reference']} (one process, same run)",
                          "velocity rel L2": sci(e["value"]), "tolerance": f"{e['tolerance']:g}",
                          "within": "yes" if e["ok"] else "NO"}]).set_index("stage")
