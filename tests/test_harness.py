"""The capture harness and its two runners, on the CPU: the bookkeeping (manifests, choices, errors, speedups,
traces) with a host clock standing in for CUDA events. Timing itself needs a GPU and is checked by the capture."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wanopt.profiling import harness
from wanopt.profiling.capture import capture
from wanopt.profiling.records import sha256
from wanopt.stages import MG2_STAGES, Choice, Plan, Stage, plan

PACKAGE = Path(__file__).resolve().parents[1] / "wanopt"
REQUIRED = ["workload", "family", "stage", "stages_applied", "device", "versions", "date", "step", "timing",
            "warmup_ms", "compile_s", "peak_memory_gib", "flops_per_step", "ceilings", "mfu", "kernel_floor_ratio",
            "error_vs_baseline", "random_weights", "trace"]


def test_t2v_runner_bookkeeping(tmp_path):
    summary = capture("tiny-t2v", "00_baseline,01_no_offload,05_attention", tmp_path, allow_cpu=True,
                      progress=False)
    assert list(summary["stages"]) == ["00_baseline", "01_no_offload", "05_attention"]
    folder = tmp_path / "tiny-t2v"
    m = json.loads((folder / "05_attention" / "manifest.json").read_text())
    assert not [f for f in REQUIRED if f not in m]
    assert m["stages_applied"] == ["00_baseline", "01_no_offload", "03_tf32", "04_dtype_hygiene", "02_batched_cfg",
                                   "05_attention"]
    # the stage's own choice, recorded where the notebooks read it, is the kernel the model then ran
    assert m["choice"]["options"] == {"backend": "flash"} and m["choice"]["evidence"] == {"measured": False}
    assert m["attention_backend_used"] == "flash"
    assert m["previous_stage"] == "01_no_offload" and m["speedup_vs_baseline"] > 0
    assert m["error_vs_baseline"]["ok"] and m["error_vs_baseline"]["tolerance"] == 5e-2
    assert "velocity" in m["error_vs_baseline"]["metric"]
    assert sha256(folder / "05_attention" / m["trace"]["file"]) == m["trace"]["sha256"]
    assert m["random_weights"]  # no checkpoint: said in the record
    run = json.loads((folder / "capture.json").read_text())
    assert run["run_id"] == m["run_id"] and run["choices"]["05_attention"] == m["choice"]
    base = json.loads((folder / "00_baseline" / "manifest.json").read_text())
    assert base["error_vs_baseline"]["value"] == 0.0 and base["speedup_vs_baseline"] == 1.0
    assert m["projection"]["steps"] == base["projection"]["steps"] and "vae_decode_ms" in run
    # the A14B-like order batches CFG after the numerics stages: whether it fits earlier is recorded
    assert run["batched_cfg_on_reference_numerics"]["fits"] is True


def test_mg2_runner_bookkeeping(tmp_path):
    # the baseline and two stages: the later stages' bookkeeping is the same, and on the CPU stage 05's kernels run
    # in Triton's interpreter, far too slow for a capture's repeats
    capture("tiny-mg2", "00_baseline,01_host_cache_indices,03_dtype_hygiene", tmp_path, allow_cpu=True,
            progress=False)
    m = json.loads((tmp_path / "tiny-mg2" / "00_baseline" / "manifest.json").read_text())
    assert not [f for f in REQUIRED if f not in m]
    assert m["family"] == "mg2" and m["evals_per_block"] == 4
    assert m["first_block"]["video_frames"] == 9 and m["video_frames_per_block"] == 12  # upstream's 9, then 12
    assert m["dit_fps"] == pytest.approx(m["video_frames_per_block"] / (m["timing"]["median"] / 1e3))
    assert m["first_block"]["flops"] < m["flops_per_step"]  # 72 keys per query instead of 144
    e = m["error_vs_baseline"]
    assert e["value"] == 0.0 and e["eval_velocity_relative_l2"] == 0.0 and "evicted" in e["metric"]
    assert m["attention_backend_used"] == "flash" and m["trace"]["profiled_steps"][2]["block"] == 2
    assert m["cold_start"]["process_to_first_block_s"] > m["cold_start"]["first_block_s"] > 0  # a fresh process


def test_a_baseline_missing_from_the_run_gives_no_error_number(tmp_path):
    capture("tiny-t2v", "05_attention", tmp_path, allow_cpu=True, progress=False, profile=False,
            attention_backend="efficient")
    m = json.loads((tmp_path / "tiny-t2v" / "05_attention" / "manifest.json").read_text())
    e = m["error_vs_baseline"]
    assert e["value"] is None and e["ok"] is None and "not measured" in e["metric"]
    assert m["speedup_vs_baseline"] is None
    # forced from the command line: the choice says so and the model ran it
    assert m["choice"] == {"options": {"backend": "efficient"}, "evidence": {"forced": True}}
    assert m["attention_backend_used"] == "efficient"


# -- the harness with a fake runner: generic, no family, no stage names ----------------------------------------


class FakeRunner:
    """Counts what the harness asks; the 'model' is a number that stages change."""

    unit = "one fake unit"
    summary_keys = ()
    pipe, checkpoint = None, None  # random weights, as the harness reads them from the pipeline

    def __init__(self, workload):
        from wanopt.configs import get_workload

        self.workload = get_workload(workload)
        self.value, self.calls = 1.0, []

    def describe(self):
        return {}

    def shapes(self):
        return {"tokens": 4}

    def measure_ceilings(self):
        return {"gemm_tflops": 1.0, "attention": {"flash": 1.0}, "attention_backend": "flash", "placeholder": True}

    def build(self, summary):
        self.calls.append("build")

    def apply(self, stage, options):
        self.calls.append(("apply", stage.name, options))
        if stage.apply is not None:
            self.value = stage.apply(self.value, **options)

    def apply_function(self, fn):
        self.value = fn(self.value)

    def prepare(self):
        pass

    def unit_call(self):
        self.calls.append("unit")

    def outputs(self):
        return {"y": torch.tensor([self.value])}

    def errors(self, out, base):
        v = None if out is None else abs(out["y"] - base["y"]).item() / abs(base["y"]).item()
        return {"metric": "relative error of y", "value": v}

    def flops(self):
        return {"per_unit": 1e9}

    def floor_s(self, ceil):
        return 1e-3

    def unit_description(self):
        return self.unit

    def extras(self, stage, m, summary):
        return {"value": self.value}

    def profile_plan(self):
        return 1, lambda i: None, [{"what": "fake"}]


def _plan(stages):
    return Plan("tiny-t2v", stages, [s.name for s in stages])


def test_harness_applies_each_stage_with_its_choice_and_records_it(tmp_path):
    stages = [Stage("00_baseline", None, "base", True, 0.0),
              Stage("01_scale", lambda v, factor: v * factor, "scale", False, 0.5,
                    choose=lambda ctx: Choice({"factor": 1.25}, {"why": ctx.device}))]
    runner = FakeRunner("tiny-t2v")
    harness.run_plan(runner, _plan(stages), tmp_path, progress=False, profile=False)
    m = json.loads((tmp_path / "tiny-t2v" / "01_scale" / "manifest.json").read_text())
    assert ("apply", "01_scale", {"factor": 1.25}) in runner.calls
    assert m["choice"] == {"options": {"factor": 1.25}, "evidence": {"why": "cpu"}}
    assert m["value"] == 1.25 and m["error_vs_baseline"]["value"] == pytest.approx(0.25)
    assert m["error_vs_baseline"]["ok"] is True and m["compile_s"] == 0.0


def test_harness_times_an_alternative_and_undoes_it(tmp_path):
    undone = []
    stages = [Stage("00_baseline", None, "base", True, 0.0),
              Stage("01_double", lambda v: v * 2, "double", True, 0.0, compiles=True,
                    alternative=("triple", lambda v: v * 3, lambda v: undone.append(v) or v / 3))]
    runner = FakeRunner("tiny-t2v")
    summary = harness.run_plan(runner, _plan(stages), tmp_path, progress=False, profile=False,
                               compare_alternatives=True)
    assert summary["alternatives"]["01_double"]["label"] == "triple" and undone == [3.0]
    assert runner.value == 2.0  # the stage itself applied to the undone state


def test_harness_keeps_what_was_captured_when_a_stage_fails(tmp_path):
    def broken(v):
        raise RuntimeError("kernel launch failed")
    stages = [Stage("00_baseline", None, "base", True, 0.0), Stage("01_broken", broken, "broken", True, 0.0)]
    summary = harness.run_plan(FakeRunner("tiny-t2v"), _plan(stages), tmp_path, progress=False, profile=False)
    assert summary["failed"] == {"stage": "01_broken", "error": "RuntimeError: kernel launch failed"}
    assert (tmp_path / "tiny-t2v" / "00_baseline" / "manifest.json").exists()
    assert json.loads((tmp_path / "tiny-t2v" / "capture.json").read_text())["failed"]["stage"] == "01_broken"


# -- plans and names -----------------------------------------------------------------------------------------


def test_plan_applies_the_order_up_to_the_last_captured_stage():
    p = plan("t2v-a14b-480p", "05_attention,00_baseline")
    assert p.captured == ["00_baseline", "05_attention"]
    assert [s.name for s in p.stages][-2:] == ["02_batched_cfg", "05_attention"]
    assert plan("mg2-universal").captured == [s.name for s in MG2_STAGES]


@pytest.mark.parametrize("workload, stages, message", [
    ("t2v-1.3b", "07_fusion", "unknown workload 't2v-1.3b'; known workloads"),
    ("t2v-1.3b-480p", "07_fusion", "unknown stage '07_fusion'"),
    ("t2v-1.3b-480p", ",", "no stage named in ','"),
    ("mg2-universal", "06_fusion", "unknown stage '06_fusion' for workload 'mg2-universal'"),
])
def test_capture_checks_names_before_it_needs_a_gpu(workload, stages, message):
    out = subprocess.run([sys.executable, "-m", "wanopt", "capture", "--workload", workload, "--stages", stages],
                         capture_output=True, text=True)
    assert out.returncode == 2 and message in out.stderr and "CUDA" not in out.stderr


def test_capture_without_a_gpu_points_at_the_committed_traces():
    out = subprocess.run([sys.executable, "-m", "wanopt", "capture", "--workload", "t2v-1.3b-480p"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "needs a CUDA GPU" in out.stderr and "traces/" in out.stderr


def test_capture_rejects_an_unknown_attention_backend_by_name():
    out = subprocess.run([sys.executable, "-m", "wanopt", "capture", "--workload", "tiny-t2v",
                          "--attention-backend", "fa3"], capture_output=True, text=True)
    assert out.returncode == 2 and "unknown attention backend 'fa3'" in out.stderr and "fa4" in out.stderr


# -- the house rules, read from the source -------------------------------------------------------------------


def _imports(path: Path) -> set[str]:
    """Absolute names of the wanopt modules a module imports (relative imports resolved)."""
    mod = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("wanopt")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.startswith("wanopt"):
                out.add(name)
                out |= {f"{name}.{a.name}" for a in node.names}
    return out


def _module_graph() -> dict[str, set[str]]:
    files = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
             for p in PACKAGE.rglob("*.py")}
    return {m: {i for i in _imports(p) if i in files and i != m} for m, p in files.items()}


def test_models_and_stages_import_nothing_from_profiling():
    graph = _module_graph()
    offenders = {m: sorted(i for i in deps if i.startswith("wanopt.profiling"))
                 for m, deps in graph.items()
                 if m.startswith(("wanopt.models", "wanopt.stages", "wanopt.pipelines", "wanopt.kernels",
                                  "wanopt.measure", "wanopt.weights"))}
    assert not {m: d for m, d in offenders.items() if d}


def test_no_import_cycle_in_the_package():
    graph = _module_graph()
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for d in graph[m]:
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(d):] + [d]))
            if d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


def test_the_harness_never_branches_on_a_stage_or_family_name():
    from wanopt.stages import FAMILY_STAGES

    source = (PACKAGE / "profiling" / "harness.py").read_text()
    names = {s.name for stages in FAMILY_STAGES.values() for s in stages} | set(FAMILY_STAGES)
    assert not [n for n in names if f'"{n}"' in source or f"'{n}'" in source]


def test_a_failing_alternative_is_recorded_and_undone(tmp_path):
    def broken(v):
        raise RuntimeError("out of memory")
    undone = []
    stages = [Stage("00_baseline", None, "base", True, 0.0),
              Stage("01_double", lambda v: v * 2, "double", True, 0.0,
                    alternative=("broken", broken, lambda v: undone.append(v) or v))]
    runner = FakeRunner("tiny-t2v")
    runner.apply_function = lambda fn: setattr(runner, "value", fn(runner.value))
    summary = harness.run_plan(runner, _plan(stages), tmp_path, progress=False, profile=False,
                               compare_alternatives=True)
    assert summary["alternatives"]["01_double"] == {"label": "broken", "error": "RuntimeError: out of memory"}
    assert undone == [1.0] and "failed" not in summary and runner.value == 2.0


def test_attention_backend_is_refused_where_no_stage_chooses_one():
    out = subprocess.run([sys.executable, "-m", "wanopt", "capture", "--workload", "mg2-universal", "--stages",
                          "00_baseline,01_host_cache_indices", "--attention-backend", "fa4"], capture_output=True,
                         text=True)
    assert out.returncode == 2 and "no stage of mg2-universal chooses an attention kernel" in out.stderr


def test_a_window_smaller_than_a_block_is_refused_with_the_fix():
    import dataclasses

    from wanopt.configs import MG2_TINY
    from wanopt.models.causal import KVCache

    with pytest.raises(ValueError, match="must hold at least one block"):
        KVCache(dataclasses.replace(MG2_TINY, local_attn_size=2))
