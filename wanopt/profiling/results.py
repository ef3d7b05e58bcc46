"""The results table: one row per headline number, read from the committed manifests.

`python -m wanopt table --format json` prints the rows; `python -m wanopt table` prints the README's markdown
table, rendered from the same rows (tests/test_readme.py keeps the README in sync). Per workload: the baseline,
the fastest captured stage and, for T2V, the fastest diffusers peer of the same run; for a multi-GPU run the
single-GPU stage and the sequence-parallel one, whose speedup is over that single-GPU stage. Every speedup compares two
numbers of one capture run; each row names its device, run and commit.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..configs import WORKLOADS
from .records import MANIFEST, RUN_SUMMARY, TRACES

COLUMNS = ("workload", "stage", "device", "gpus", "unit", "median_ms", "speedup_vs_baseline", "mfu", "kernel_floor_ratio",
           "peak_gib", "projected", "run_id", "commit")


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def short_device(name: str | None) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'H100', 'NVIDIA H200' -> 'H200' (the README's device column)."""
    if not name:
        return "cpu"
    for part in name.replace("NVIDIA", "").split():
        if part[:1].isalpha() and any(ch.isdigit() for ch in part):
            return part
    return name


def _manifests(folder: Path) -> dict[str, dict]:
    return {p.parent.name: _json(p) for p in sorted(folder.glob(f"*/{MANIFEST}"))}


def _projected(m: dict) -> dict | None:
    if "projection" in m:
        return {"video_s": m["projection"]["total_s"], "steps": m["projection"]["steps"]}
    if "e2e" in m:
        return {"frames_per_s": m["e2e"]["fps"], "what": "video frames per second end to end (VAE decode included)"}
    if "dit_fps" in m:
        return {"frames_per_s": m["dit_fps"], "what": "generated frames per second, DiT only"}
    return None


UNIT_NAMES = {"t2v": "step", "mg2": "block"}  # the README's short name of a family's timed unit


def _row(workload: str, stage: str, m: dict, run: dict) -> dict:
    return {"workload": workload, "stage": stage, "device": m["device"], "gpus": m.get("world_size", 1),
            "unit": m["step"],
            "median_ms": m["timing"]["median"], "speedup_vs_baseline": m["speedup_vs_baseline"] or 1.0,
            "mfu": m["mfu"], "kernel_floor_ratio": m["kernel_floor_ratio"],
            "peak_gib": m["peak_memory_gib"], "projected": _projected(m), "run_id": m["run_id"],
            "commit": (m.get("versions") or {}).get("git_commit") or run.get("env", {}).get("git_commit")}


def result_rows(root=None) -> list[dict]:
    """Every row of the README table, as dicts with the keys in COLUMNS."""
    root = Path(root or TRACES)
    rows = []
    for name, wl in WORKLOADS.items():
        folder = root / name
        if name.startswith("tiny") or not (folder / RUN_SUMMARY).exists():
            continue
        run = _json(folder / RUN_SUMMARY)
        # one run per row set: a later partial run rewrites capture.json but leaves older stage folders behind
        manifests = {k: m for k, m in _manifests(folder).items() if m["run_id"] == run["run_id"]}
        parallel = [m for m in manifests.values() if "single_gpu" in m]
        if "00_baseline" not in manifests and parallel:  # a multi-GPU run: one GPU against N, in the same call
            sp = parallel[0]
            single = manifests[sp["single_gpu"]["stage"]]
            rows.append(_row(name, single["stage"], single, run))
            rows.append({**_row(name, sp["stage"], sp, run), "speedup_vs_baseline": sp["speedup_vs_single_gpu"]})
            continue
        if "00_baseline" not in manifests:
            continue
        base = manifests["00_baseline"]
        fastest = min(manifests, key=lambda s: manifests[s]["timing"]["median"])
        for stage in dict.fromkeys(["00_baseline", fastest]):
            rows.append(_row(name, stage, manifests[stage], run))
        peers = {k: v for k, v in run.get("peers", {}).items() if isinstance(v, dict) and "timing" in v}
        if peers:
            label = min(peers, key=lambda k: peers[k]["timing"]["median"])
            p = peers[label]["timing"]["median"]
            rows.append({**{c: None for c in COLUMNS}, "workload": name, "stage": f"{label} (peer)",
                         "device": base["device"], "unit": base["step"].split(" (")[0] + " (diffusers' model)",
                         "median_ms": p, "speedup_vs_baseline": base["timing"]["median"] / p,
                         "run_id": base["run_id"], "commit": _row(name, "", base, run)["commit"]})
    return rows


def _cell(v, fmt: str) -> str:
    return "" if v is None else format(v, fmt)


def _time(ms: float) -> str:
    return f"{ms / 1e3:.2f} s" if ms >= 1000 else f"{ms:.0f} ms"


def _projection(p: dict | None) -> str:
    if not p:
        return ""
    if "video_s" in p:
        return f"{p['video_s']:.0f} s ({p['steps']} steps)"
    return f"{p['frames_per_s']:.1f} frames/s " + ("end to end" if "end to end" in p["what"] else "DiT-only")


def readme_table(root=None) -> str:
    """The README's results table (markdown), from result_rows."""
    lines = ["| workload | stage | device | median time | vs baseline | MFU | × kernel floor | peak GiB | projected |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result_rows(root):
        stage = r["stage"].replace("_", " ") if r["stage"].endswith("(peer)") else r["stage"]
        gpus = f"{r['gpus']}× " if (r["gpus"] or 1) > 1 else ""
        lines.append(f"| {r['workload']} | {stage} | {gpus}{short_device(r['device'])} | "
                     f"{_time(r['median_ms'])} / {UNIT_NAMES[WORKLOADS[r['workload']].family]} | "
                     f"{r['speedup_vs_baseline']:.2f}× | {_cell(r['mfu'], '.2f')} | "
                     f"{_cell(r['kernel_floor_ratio'], '.2f')} | {_cell(r['peak_gib'], '.1f')} | "
                     f"{_projection(r['projected'])} |")
    return "\n".join(lines)
