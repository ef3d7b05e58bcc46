"""Where captures live on disk and what every record carries: paths, the trace file name, the run id, versions,
JSON writing. Light on purpose: analysis (notebooks, CPU) and the harness (GPU) both import it."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TRACES = ROOT / "traces"
TRACE_NAME = "rank0.pt.trace.json.gz"  # rank<r>.pt.trace.json.gz: HTA reads one file per rank
MANIFEST = "manifest.json"
RUN_SUMMARY = "capture.json"
VERSION_KEYS = ("torch", "cuda", "cudnn", "driver", "triton", "python", "diffusers", "transformers", "flash_attn_4",
                "git_commit", "host_cpu")


def trace_name(rank: int) -> str:
    """The trace file of one rank (a single-GPU stage has rank 0's only)."""
    return f"rank{rank}.pt.trace.json.gz"


def new_run_id() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def write_json(path: Path, obj) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
    return path


def _json_default(o):
    import torch

    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, (torch.dtype, torch.device, Path)):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def environment() -> dict:
    """Device and software versions for the manifest."""
    import torch

    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        # the host matters: a launch-bound unit (the MG2 reference) runs at the speed of the CPU that launches it
        "host_cpu": _cpu_model(), "host_cores": os.cpu_count(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(device=props.name, device_memory_gib=round(props.total_memory / 2**30, 1),
                   multiprocessors=props.multi_processor_count)
        driver = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        env["driver"] = driver.split()[0] if driver else driver  # one line per GPU: the same driver for all
    for key, dist in (("triton", "triton"), ("diffusers", "diffusers"), ("transformers", "transformers"),
                      ("flash_attn_4", "flash-attn-4")):
        env[key] = _dist_version(dist)
    # the device machine gets a copy of the working tree without .git: the caller passes the commit in
    env["git_commit"] = os.environ.get("WANOPT_GIT_COMMIT") or _run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT)
    env["inductor_caches"] = "disabled" if os.environ.get("TORCHINDUCTOR_FORCE_DISABLE_CACHES") == "1" else "default"
    return env


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def versions(env: dict) -> dict:
    return {k: env.get(k) for k in VERSION_KEYS}


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


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
