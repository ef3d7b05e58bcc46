"""python -m wanopt: the help a new user reads first, and the listings."""

import subprocess
import sys

import pytest

from wanopt.configs import WORKLOADS
from wanopt.stages import FAMILY_STAGES


def wanopt(*args):
    return subprocess.run([sys.executable, "-m", "wanopt", *args], capture_output=True, text=True)


def test_top_help_lists_every_command_with_what_it_does():
    out = wanopt("--help")
    assert out.returncode == 0
    for command in ("capture", "render", "table", "stages", "workloads"):
        assert f"  {command}" in out.stdout, command


def test_capture_help_says_it_needs_a_gpu_and_lists_the_stages():
    out = wanopt("capture", "--help").stdout
    assert "CUDA GPU" in out and "committed traces" in out
    for stages in FAMILY_STAGES.values():
        assert all(s.name in out for s in stages)
    assert all(w in out for w in WORKLOADS)


@pytest.mark.parametrize("command", ["table", "stages", "workloads", "render"])
def test_every_subcommand_has_a_description(command):
    out = wanopt(command, "--help").stdout
    description = out[out.index("\n\n"):].strip().split("\n\n")[0]
    assert len(description.split()) >= 4 and not description.startswith(("positional", "options"))


def test_stage_listing_is_aligned_per_family():
    blocks = wanopt("stages").stdout.split(":\n")
    families = [b.splitlines()[-1] for b in blocks[:-1]]
    assert families == list(FAMILY_STAGES)
    for family, block in zip(families, blocks[1:]):
        rows = [line for line in block.splitlines() if line.startswith("  ")]
        assert [r.split()[0] for r in rows] == [s.name for s in FAMILY_STAGES[family]]
        starts = {r.index(" tol ") for r in rows}
        assert len(starts) == 1, f"{family}: the tolerance column does not line up"


def test_workloads_listing_names_each_family():
    out = wanopt("workloads").stdout.splitlines()
    assert [line.split()[0] for line in out] == list(WORKLOADS)
    assert {line.split()[1] for line in out} == {"t2v", "mg2"}


def test_render_names_unknown_and_ambiguous_notebooks_readably():
    out = wanopt("render", "nosuch")
    assert out.returncode != 0 and "no notebook matches 'nosuch'" in out.stderr
    listed = [line.strip() for line in out.stderr.splitlines()[1:] if line.strip()]
    assert listed == sorted(listed) and "t2v/05_attention" in listed and "[" not in out.stderr
    out = wanopt("render", "0")
    assert out.returncode != 0 and "ambiguous" in out.stderr
