"""python -m wanopt render, on tiny notebooks made in tmp_path (a kernel start is ~1 s each)."""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

from wanopt import render as R

HEADER = """\
# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---
"""


def notebook(path: Path, title: str, intro: str = "The intro. More text.", code: str = "x = 1") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    md = "\n".join(f"# {line}".rstrip() for line in f"# {title}\n\n{intro}".splitlines())
    path.write_text(f"{HEADER}\n# %% [markdown]\n{md}\n\n# %%\n{code}\n")
    return path


def tree(root: Path, names) -> Path:
    for name in names:
        notebook(root / f"{name}.py", f"Title of {name}")
    return root


# --------------------------------------------------------------------------------------- discovery and order

def test_discover_finds_paired_percent_scripts_only(tmp_path):
    root = tree(tmp_path / "notebooks", ["00_tour", "t2v/00_baseline", "t2v/summary", "mg2/00_baseline"])
    (root / "sanitize.cfg").write_text("[x]\nregex: a\nreplace: b\n")
    notebook(root / ".ipynb_checkpoints" / "00_tour-checkpoint.py", "checkpoint")
    notebook(root / "t2v" / ".ipynb_checkpoints" / "summary-checkpoint.py", "checkpoint")
    (root / "helper.py").write_text("def f():\n    return 1\n")  # not a notebook
    assert sorted(R.discover(root)) == ["00_tour", "mg2/00_baseline", "t2v/00_baseline", "t2v/summary"]


def test_reading_order():
    names = ["parallel/sequence_parallel", "t2v/summary", "t2v/zz_notes", "mg2/summary", "mg2/e2e", "t2v/e2e",
             "t2v/08_cuda_graphs", "t2v/00_baseline", "t2v/02_batched_cfg", "mg2/01_kv", "mg2/00_baseline",
             "00_tour", "other/thing", "t2v/99_new_stage", "t2v/03_tf32"]
    lists = {"t2v": ["00_baseline", "03_tf32", "02_batched_cfg", "08_cuda_graphs"]}  # list order, not name order
    assert R.reading_order(names, lists) == [
        "00_tour",
        "t2v/00_baseline", "t2v/03_tf32", "t2v/02_batched_cfg", "t2v/08_cuda_graphs", "t2v/99_new_stage",
        "t2v/e2e", "t2v/summary", "t2v/zz_notes",
        "mg2/00_baseline", "mg2/01_kv", "mg2/e2e", "mg2/summary",  # no MG2 list: stages by name
        "parallel/sequence_parallel",
        "other/thing",
    ]
    lists["mg2"] = ["01_kv", "00_baseline"]
    assert R.reading_order(names, lists)[9:11] == ["mg2/01_kv", "mg2/00_baseline"]


def test_stage_lists_come_from_wanopt_stages():
    from wanopt import stages

    lists = R.load_stage_lists()
    assert lists["t2v"] == [s.name for s in stages.T2V_STAGES]
    assert ("mg2" in lists) == hasattr(stages, "MG2_STAGES")


def test_select_by_path_part_and_folder():
    known = ["00_tour", "t2v/00_baseline", "t2v/05_attention", "t2v/summary", "t2v/summary_old", "mg2/00_baseline"]
    assert R.select(["t2v/05_attention"], known) == ["t2v/05_attention"]
    assert R.select(["05_att"], known) == ["t2v/05_attention"]
    assert R.select(["t2v/summary"], known) == ["t2v/summary"]  # exact beats being part of t2v/summary_old
    assert R.select(["mg2"], known) == ["mg2/00_baseline"]  # a folder: all of it
    assert R.select(["tour", "05_attention"], known) == ["00_tour", "t2v/05_attention"]  # in the order of known
    assert R._normalize_query("notebooks/t2v/05_attention.ipynb", Path("/x/notebooks")) == "t2v/05_attention"


def test_select_unknown_lists_the_names_sorted(tmp_path):
    known = ["t2v/05_attention", "00_tour", "mg2/00_baseline"]
    with pytest.raises(R.RenderError) as e:
        R.select(["nosuch"], known)
    msg = str(e.value)
    assert "'nosuch'" in msg and "[" not in msg
    assert msg.splitlines()[1:] == ["  00_tour", "  mg2/00_baseline", "  t2v/05_attention"]


def test_select_ambiguous_lists_the_matches():
    known = ["00_tour", "t2v/00_baseline", "t2v/summary", "mg2/00_baseline"]
    with pytest.raises(R.RenderError) as e:
        R.select(["0"], known)
    msg = str(e.value)
    assert "ambiguous" in msg
    assert [line.strip() for line in msg.splitlines()[1:4]] == ["00_tour", "mg2/00_baseline", "t2v/00_baseline"]
    with pytest.raises(R.RenderError, match="ambiguous"):
        R.select(["baseline"], known)


def test_main_unknown_name_exits_nonzero(capsys):
    assert R.main(["surely-no-such-notebook"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no notebook matches 'surely-no-such-notebook'")
    assert "['" not in err and "00_tour" in err


# ------------------------------------------------------------------------------------------- title and intro

def test_title_and_intro():
    import nbformat.v4 as v4

    nb = v4.new_notebook(cells=[
        v4.new_code_cell("x = 1"),
        v4.new_markdown_cell("# 03 · Batched `CFG`: one forward\n\n**What.** Two evals per step. The reference "
                             "runs them one after the other.\n\nMore."),
    ])
    title, intro, cell = R.title_and_intro(nb)
    assert (title, intro, cell) == ("03 · Batched `CFG`: one forward", "Two evals per step.", 1)
    assert R._plain(title) == "03 · Batched CFG: one forward"
    nb = v4.new_notebook(cells=[v4.new_markdown_cell("# Title"), v4.new_markdown_cell("Intro on its own cell:\n"
                                                                                    "- a list\n- of things")])
    assert R.title_and_intro(nb)[:2] == ("Title", "Intro on its own cell:")
    assert R.title_and_intro(v4.new_notebook(cells=[v4.new_markdown_cell("## not a title")]))[0] is None


def test_trace_files_by_family_and_stage(tmp_path):
    traces = tmp_path / "traces"
    for wl in ("t2v-a", "t2v-b", "mg2-c", "tiny-t2v"):
        f = traces / wl / "05_attention" / "rank0.pt.trace.json.gz"
        f.parent.mkdir(parents=True)
        f.write_bytes(b"")
    (traces / "t2v-c" / "00_baseline").mkdir(parents=True)
    assert [p.relative_to(traces).parts[0] for p in R.trace_files("t2v/05_attention", traces)] == ["t2v-a", "t2v-b"]
    assert [p.relative_to(traces).parts[0] for p in R.trace_files("mg2/05_attention", traces)] == ["mg2-c"]
    assert R.trace_files("t2v/00_baseline", traces) == []  # no trace file in the folder
    assert R.trace_files("t2v/summary", traces) == [] and R.trace_files("00_tour", traces) == []


# ----------------------------------------------------------------------------------------------- rendering

def test_render_writes_notebooks_pages_and_index(tmp_path, capfd):
    import nbformat

    root = tmp_path / "notebooks"
    code = ("import os, sys\n"
            "print(os.getcwd(), sys.executable, os.environ['IPYKERNEL_CELL_NAME'], os.environ['TQDM_DISABLE'])")
    notebook(root / "00_tour.py", "00 · A tour", "**What.** A tour of it all. Then more.", code)
    notebook(root / "t2v" / "summary.py", "Summary of `t2v`", "Numbers side by side.")
    notebook(root / "t2v" / "01_no_offload.py", "02 · No offload", "Both experts resident. Details.", code)
    traces = tmp_path / "traces"
    for wl in ("t2v-x", "mg2-y"):
        f = traces / wl / "01_no_offload" / "rank0.pt.trace.json.gz"
        f.parent.mkdir(parents=True)
        f.write_bytes(b"\x1f\x8b")
    html_dir = tmp_path / "build" / "html"
    (html_dir / "t2v").mkdir(parents=True)
    (html_dir / "01_old_layout.html").write_text("stale")  # a page of a notebook that is gone

    done = R.render(root=root, html_dir=html_dir, traces=traces, log_dir=tmp_path / "logs",
                    stage_lists={"t2v": ["00_baseline", "01_no_offload"]})
    captured = capfd.readouterr()
    assert [p.relative_to(root).as_posix() for p in done] == ["00_tour.ipynb", "t2v/01_no_offload.ipynb",
                                                                "t2v/summary.ipynb"]
    # progress, one line per notebook, in reading order
    progress = [line for line in captured.out.splitlines() if line.startswith("[")]
    assert [re.sub(r" \d+ s$", "", line) for line in progress] == [
        "[1/3] 00_tour ...", "[2/3] t2v/01_no_offload ...", "[3/3] t2v/summary ..."]
    assert "without encryption" not in captured.err + captured.out  # the kernel's warning is gone

    nb = nbformat.read(root / "t2v" / "01_no_offload.ipynb", as_version=4)
    assert [c.id for c in nb.cells] == ["cell-000", "cell-001"]
    assert nb.metadata.kernelspec.name == "python3"
    assert "version" not in nb.metadata.get("language_info", {})
    assert nb.metadata.jupytext.formats == "ipynb,py:percent"
    cwd, exe, cell_name, tqdm = nb.cells[1].outputs[0].text.split()
    assert Path(cwd) == (root / "t2v").resolve()  # executed in the notebook's folder
    assert Path(exe) == Path(sys.executable)  # with this interpreter, whatever kernelspecs are installed
    assert (cell_name, tqdm) == ("<IPY-INPUT>", "1")
    assert "IPYKERNEL_CELL_NAME" not in os.environ or os.environ["IPYKERNEL_CELL_NAME"] == "<IPY-INPUT>"

    page = (html_dir / "t2v" / "01_no_offload.html").read_text()
    assert "<title>02 · No offload</title>" in page
    links = re.findall(r'href="([^"]+rank0\.pt\.trace\.json\.gz)"', page)
    assert len(links) == 1 and "t2v-x" in links[0]  # its family's workloads only
    assert (html_dir / "t2v" / links[0]).resolve() == (traces / "t2v-x" / "01_no_offload" /
                                                       "rank0.pt.trace.json.gz").resolve()
    assert "ui.perfetto.dev" in page and "Open trace file" in page
    assert page.index("rank0.pt.trace.json.gz") < page.index('class="jp-Cell jp-CodeCell')  # above the code
    assert "Open trace file" not in (html_dir / "t2v" / "summary.html").read_text()
    assert "<title>00 · A tour</title>" in (html_dir / "00_tour.html").read_text()
    assert not (html_dir / "01_old_layout.html").exists()

    index = (html_dir / "index.html").read_text()
    items = re.findall(r'<li>.*?<a href="([^"]+)">([^<]*)</a>(.*?)</li>', index)
    assert [(href, label) for href, label, _ in items] == [
        ("00_tour.html", "00 · A tour"), ("t2v/01_no_offload.html", "02 · No offload"),
        ("t2v/summary.html", "Summary of t2v")]
    assert all((html_dir / href).is_file() for href, _, _ in items)
    assert "A tour of it all." in items[0][2] and "Then more" not in items[0][2]


def test_failing_notebook_one_line_log_and_no_stale_page(tmp_path, capfd):
    root = tmp_path / "notebooks"
    code = "x = 1\n\n# %%\n\ny = 2  # the failing cell\nraise ValueError('bad value')"
    notebook(root / "t2v" / "03_tf32.py", "Boom", code=code)
    before = (root / "t2v" / "03_tf32.py").read_text()
    html_dir = tmp_path / "html"
    stale = html_dir / "t2v" / "03_tf32.html"
    stale.parent.mkdir(parents=True)
    stale.write_text("<html>stale</html>")
    logs = tmp_path / "logs"
    with pytest.raises(R.RenderError, match=r"1 of 1 notebooks failed: t2v/03_tf32"):
        R.render(["03_tf32"], root=root, html_dir=html_dir, traces=tmp_path / "traces", log_dir=logs, stage_lists={})
    err = capfd.readouterr().err
    errors = [line for line in err.splitlines() if line.strip()]
    assert len(errors) == 1, err  # one line, no traceback through nbclient
    assert errors[0].startswith("error: t2v/03_tf32: cell 2 (`y = 2  # the failing cell`) raised ValueError: bad "
                                "value; full traceback in ")
    log = logs / "t2v" / "03_tf32.log"
    assert str(log.resolve()) in errors[0] or "logs/t2v/03_tf32.log" in errors[0]
    assert "ValueError" in log.read_text() and "Traceback" in log.read_text()
    assert not stale.exists()
    assert not (root / "t2v" / "03_tf32.ipynb").exists()  # no half-executed notebook written
    assert (root / "t2v" / "03_tf32.py").read_text() == before


# --------------------------------------------------------------------------------------------------- pairing

def _pair(root: Path, edit: str | None):
    """A .py and its .ipynb as render writes it; `edit` appended to the markdown cell of the .ipynb only."""
    import nbformat

    py = notebook(root / "t2v" / "05_attention.py", "Attention")
    nb = R._prepare(py)
    if edit:
        nb.cells[0].source += edit
    ipynb = py.with_suffix(".ipynb")
    nbformat.write(nb, ipynb)
    return py, ipynb


def _touch_newer(path: Path, than: Path):
    t = than.stat().st_mtime + 10
    os.utime(path, (t, t))


def test_refuses_when_ipynb_is_newer_and_differs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "notebooks"
    py, ipynb = _pair(root, "\n\nAn edit made in Lab.")
    _touch_newer(ipynb, py)
    ipynb_before = ipynb.read_text()
    with pytest.raises(R.RenderError) as e:
        R.render(root=root, html_dir=None, log_dir=None, stage_lists={})
    msg = str(e.value)
    assert len(msg.splitlines()) == 1
    assert msg.startswith("t2v/05_attention: ") and "jupytext --sync notebooks/t2v/05_attention.ipynb" in msg
    assert ipynb.read_text() == ipynb_before  # nothing executed, nothing overwritten

    _touch_newer(py, ipynb)  # the .py is newer: it is the source, no refusal
    assert R.unsynced(py) is None


def test_no_refusal_when_sources_agree(tmp_path):
    py, ipynb = _pair(tmp_path / "notebooks", None)
    _touch_newer(ipynb, py)  # e.g. a fresh checkout, or saved in Lab without an edit
    assert R.unsynced(py) is None


def test_sync_takes_the_ipynb_edits_into_the_py(tmp_path):
    shutil.copy(R.ROOT / "jupytext.toml", tmp_path / "jupytext.toml")  # as in the repository: the header stays
    py, ipynb = _pair(tmp_path / "notebooks", "\n\nAn edit made in Lab.")
    _touch_newer(ipynb, py)
    assert R.unsynced(py) == ipynb
    R.sync_from_ipynb(ipynb)
    assert "# An edit made in Lab." in py.read_text()
    assert py.read_text().startswith(HEADER)
    assert R.unsynced(py) is None


def test_jupytext_config_keeps_the_py_header_on_a_lab_save(tmp_path):
    """Save a notebook the way JupyterLab does (jupytext's contents manager, with the repository's
    jupytext.toml): the .py header stays as committed, only the edit and the cell's tags reach the .py, and the
    .ipynb metadata is what render writes."""
    from jupytext import TextFileContentsManager

    shutil.copy(R.ROOT / "jupytext.toml", tmp_path / "jupytext.toml")
    py, ipynb = _pair(tmp_path / "notebooks", None)
    before = py.read_text()
    cm = TextFileContentsManager(root_dir=str(tmp_path))
    model = cm.get("notebooks/t2v/05_attention.ipynb")
    nb = model["content"]
    nb.metadata["language_info"] = {"name": "python", "version": "3.12.1"}
    nb.cells[0].metadata.update({"jp-MarkdownHeadingCollapsed": True, "editable": False})
    nb.cells[1].metadata.update({"scrolled": True, "execution": {"iopub.status.idle": "now"},
                                 "tags": ["nbval-ignore-output"]})
    nb.cells[1].source = "x = 2"
    time.sleep(0.01)
    cm.save({"type": "notebook", "format": "json", "content": nb}, "notebooks/t2v/05_attention.ipynb")
    after = py.read_text()
    assert after.startswith(HEADER)
    assert after.replace(HEADER, "") == before.replace(HEADER, "").replace(
        "# %%\nx = 1", '# %% tags=["nbval-ignore-output"]\nx = 2')
    import nbformat

    saved = nbformat.read(ipynb, as_version=4)
    assert saved.metadata.jupytext == R._prepare(py).metadata.jupytext
    assert R.unsynced(py) is None
