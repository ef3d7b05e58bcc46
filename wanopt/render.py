"""python -m wanopt render [NAME ...]: rebuild notebooks from their paired .py (jupytext percent), execute them on
this machine (CPU is enough: the notebooks read committed traces and run the tiny models), write each executed
.ipynb in place (the committed outputs that `pytest --nbval` compares) and an HTML copy under build/html/, with
build/html/index.html listing every notebook in reading order.

A notebook is NAME.py + NAME.ipynb anywhere under notebooks/; NAME is its path relative to notebooks/ without the
suffix (`00_tour`, `t2v/05_attention`). On the command line a NAME may be a unique part of one (`05_att`), or a
family folder (`t2v`) for all of its notebooks.

Reading order (`reading_order`): the notebooks at the top of notebooks/ (00_tour); then the family folders t2v,
mg2, parallel (others after them, by name); inside a family its stage notebooks in the order of the family's stage
list (`wanopt.stages.<FAMILY>_STAGES`, by name where there is none), then `e2e`, then `summary`, then the rest by
name.
"""

from __future__ import annotations

import argparse
import html
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
HTML_DIR = ROOT / "build" / "html"
LOG_DIR = ROOT / "build" / "render-logs"  # full tracebacks of failed notebooks, <name>.log
TRACES = ROOT / "traces"

FAMILIES = ("t2v", "mg2", "parallel")  # reading order of the family folders; unknown ones follow by name
KERNEL_ENV = {"IPYKERNEL_CELL_NAME": "<IPY-INPUT>",  # warnings name the cell, not a temp file (nbval)
              "TQDM_DISABLE": "1"}
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}  # written to every .ipynb
FORMATS = "ipynb,py:percent"
PERFETTO = "https://ui.perfetto.dev"


class RenderError(SystemExit):
    """A render that cannot start or did not complete. A SystemExit, so `render()` called from a command line
    ends with the message and exit status 1 instead of a traceback; `main()` prints it and returns 1."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


# --------------------------------------------------------------------------------------------------- discovery

def _is_percent_script(path: Path) -> bool:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return re.search(r"^# %%", text, re.MULTILINE) is not None


def discover(root: Path = NOTEBOOKS) -> dict[str, Path]:
    """Every notebook under `root`: {name: its .py}, name = the path relative to root without `.py`. Only
    jupytext percent scripts count (`# %%` cells); hidden folders (.ipynb_checkpoints) and __pycache__ are
    skipped, and so is everything that is not a .py (sanitize.cfg, the .ipynb themselves)."""
    root = Path(root)
    found = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            continue
        if _is_percent_script(path):
            found[rel.with_suffix("").as_posix()] = path
    return found


def load_stage_lists(families=None) -> dict[str, list[str]]:
    """{family: stage names in order} from `wanopt.stages.<FAMILY>_STAGES` (T2V_STAGES, MG2_STAGES, ...), for
    the families that have such a list."""
    from . import stages

    out = {}
    for family in families if families is not None else FAMILIES:
        seq = getattr(stages, f"{family.upper()}_STAGES", None)
        if seq:
            out[family] = [getattr(s, "name", s) for s in seq]
    return out


def reading_order(names, stage_lists: dict[str, list[str]] | None = None) -> list[str]:
    """`names` (paths relative to notebooks/, no suffix) sorted in reading order: top-level notebooks by name;
    then one family folder after the other (FAMILIES first, in that order, then the others by name); inside a
    family the stage notebooks in the order of `stage_lists[family]` (notebooks named NN_... that the list lacks
    follow them by name; without a list all NN_... by name), then `e2e`, then `summary`, then the rest by name."""
    stage_lists = stage_lists or {}

    def key(name: str):
        parts = name.split("/")
        if len(parts) == 1:
            return (0, "", 0, 0, name)
        family, rest = parts[0], "/".join(parts[1:])
        fam_key = (1, FAMILIES.index(family), "") if family in FAMILIES else (2, 0, family)
        order = list(stage_lists.get(family) or [])
        if rest in order:
            within = (0, order.index(rest), "")
        elif re.match(r"\d+_", rest):
            within = (0, len(order), rest)
        elif rest == "e2e":
            within = (1, 0, "")
        elif rest == "summary":
            within = (2, 0, "")
        else:
            within = (3, 0, rest)
        return (fam_key, within)

    names = list(names)
    top = sorted(n for n in names if "/" not in n)
    nested = sorted((n for n in names if "/" in n), key=key)
    return top + nested


def _normalize_query(query: str, root: Path) -> str:
    q = query.strip().replace(os.sep, "/")
    for suffix in (".ipynb", ".py", ".html"):
        if q.endswith(suffix):
            q = q[: -len(suffix)]
    for prefix in (f"{root.as_posix().rstrip('/')}/", f"{root.name}/", "./"):
        if q.startswith(prefix):
            q = q[len(prefix):]
    return q.strip("/")


def _name_list(names) -> str:
    return "\n".join(f"  {n}" for n in names)


def select(queries, known) -> list[str]:
    """The notebooks that `queries` name, in the order of `known` (give it in reading order). A query selects
    the notebook whose name equals it, else all notebooks of the folder it names (`t2v`), else the one notebook
    whose name contains it; none or several raise RenderError with the sorted list of names."""
    known = list(known)
    chosen: set[str] = set()
    for q in queries:
        if q in known:
            chosen.add(q)
            continue
        in_folder = [n for n in known if n.startswith(q + "/")]
        if in_folder:
            chosen.update(in_folder)
            continue
        matches = [n for n in known if q in n]
        if len(matches) == 1:
            chosen.add(matches[0])
        elif not matches:
            raise RenderError(f"no notebook matches '{q}'. Known notebooks:\n{_name_list(sorted(known))}")
        else:
            raise RenderError(f"'{q}' is ambiguous: it matches {len(matches)} notebooks:\n"
                              f"{_name_list(sorted(matches))}\nGive more of the name, e.g. '{sorted(matches)[0]}'.")
    return [n for n in known if n in chosen]


# ------------------------------------------------------------------------------------------- title and intro

_HEADING = re.compile(r"^#\s+(.+?)\s*#*\s*$")


def _plain(markdown: str) -> str:
    """Inline markdown as plain text (for <title>): no backticks, emphasis markers or link targets."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", markdown)
    text = re.sub(r"(\*\*|__|\*|`)", "", text)
    return " ".join(text.split())


def title_and_intro(nb) -> tuple[str | None, str, int | None]:
    """(the first level-1 markdown heading, the first sentence of the text after it (markdown), index of the
    cell that holds the heading). The intro skips a leading bold label such as `**What.**`."""
    cells = nb.cells
    for i, cell in enumerate(cells):
        if cell.cell_type != "markdown":
            continue
        lines = cell.source.splitlines()
        for j, line in enumerate(lines):
            m = _HEADING.match(line)
            if m:
                after = lines[j + 1:]
                k = i + 1
                while not "".join(after).strip() and k < len(cells) and cells[k].cell_type == "markdown":
                    after = cells[k].source.splitlines()
                    k += 1
                return m.group(1).strip(), _first_sentence(after), i
    return None, "", None


def _first_sentence(lines, limit: int = 240) -> str:
    para = []
    for line in lines:
        s = line.strip()
        if not s:
            if para:
                break
            continue
        if s.startswith("#"):
            if para:
                break
            continue
        if para and re.match(r"([-*+]|\d+[.)])\s", s):  # a list starts: the sentence before it is the intro
            break
        para.append(s)
    text = " ".join(para)
    text = re.sub(r"^\*\*[^*]{1,30}[.:]\*\*\s*", "", text)  # **What.** The stage ... -> The stage ...
    parts = re.split(r"(?<=[.!?])\s+(?=[A-Z0-9(`*\"'])", text, maxsplit=1)
    sentence = parts[0] if parts else ""
    if len(sentence) > limit:
        sentence = sentence[:limit].rsplit(" ", 1)[0]
        if sentence.count("`") % 2:
            sentence = sentence[: sentence.rfind("`")].rstrip()
        sentence += " …"
    return sentence


def _markdown_inline(text: str) -> str:
    if not text:
        return ""
    from nbconvert.filters.markdown import markdown2html

    out = markdown2html(text).strip()
    m = re.fullmatch(r"<p>(.*)</p>", out, re.DOTALL)
    return m.group(1) if m else out


# ------------------------------------------------------------------------------------------------ trace links

def trace_files(name: str, traces: Path = TRACES) -> list[Path]:
    """The committed traces of a stage notebook: traces/<workload>/<stage>/rank0.pt.trace.json.gz for every
    workload of the notebook's family (its folder: t2v -> t2v-*) that has the stage (its file name)."""
    parts = name.split("/")
    if len(parts) != 2 or not Path(traces).is_dir():
        return []
    family, stage = parts
    return sorted(p for p in Path(traces).glob(f"{family}-*/{stage}/rank0.pt.trace.json.gz") if p.is_file())


def _rel_href(target: Path, page_dir: Path) -> str:
    return Path(os.path.relpath(Path(target).resolve(), Path(page_dir).resolve())).as_posix()


def _display_path(path: Path) -> str:
    """`path` relative to the current folder where it lies below it (notebooks/t2v/00_baseline.ipynb), else
    absolute."""
    path = Path(path).resolve()
    try:
        return path.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def _page_header(name: str, page: Path, index: Path, traces: Path) -> str:
    """The HTML block injected under a page's title (the notebook itself is not changed): a link back to the
    index and, for a stage notebook, its committed traces and how to open them."""
    # nbconvert passes raw HTML cells through bleach: <div>, <a>, <ul>, <code>, <strong> and class attributes survive
    parts = [f'<div><a href="{html.escape(_rel_href(index, page.parent))}">&larr; all notebooks</a></div>']
    files = trace_files(name, traces)
    if files:
        items = []
        for f in files:
            try:
                shown = f.resolve().relative_to(Path(traces).resolve().parent).as_posix()
            except ValueError:
                shown = f.as_posix()
            items.append(f'<li><a href="{html.escape(_rel_href(f, page.parent))}"><code>{html.escape(shown)}'
                         f'</code></a></li>')
        parts.append(f"<div><strong>Traces of this stage</strong> (torch.profiler, committed):</div>"
                     f"<ul>{''.join(items)}</ul>"
                     f'<div>To look at one: open <a href="{PERFETTO}">ui.perfetto.dev</a>, click &ldquo;Open trace '
                     f"file&rdquo; and pick the file; the <code>.json.gz</code> loads directly, no need to unzip."
                     f"</div>")
    return ('<div class="jp-Cell jp-Notebook-cell"><div class="jp-RenderedHTMLCommon wanopt-page-header">'
            + "".join(parts) + "</div></div>")


# ------------------------------------------------------------------------------------------------ pairing

def _sources(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, "\n".join(line.rstrip() for line in c.source.strip("\n").splitlines()))
            for c in nb.cells]


def unsynced(py: Path) -> Path | None:
    """The paired .ipynb when it holds edits that its .py lacks: it is newer than the .py and its cell sources
    differ (JupyterLab without the jupytext pairing, another editor). Rendering would overwrite those edits."""
    import jupytext
    import nbformat

    ipynb = Path(py).with_suffix(".ipynb")
    if not ipynb.exists() or ipynb.stat().st_mtime <= Path(py).stat().st_mtime:
        return None
    try:
        ipynb_nb = nbformat.read(ipynb, as_version=4)
    except Exception:  # unreadable: rendering replaces it, and its .py is the source anyway
        return None
    return ipynb if _sources(ipynb_nb) != _sources(jupytext.read(py)) else None


def sync_from_ipynb(ipynb: Path) -> None:
    """`jupytext --sync NAME.ipynb`: the .py takes the cell sources of the (newer) .ipynb."""
    from jupytext.cli import jupytext as jupytext_cli

    jupytext_cli(["--sync", "--quiet", str(ipynb)])


# ---------------------------------------------------------------------------------------------- execution

def _kernel_manager_class():
    """An nbclient kernel manager that starts `sys.executable -m ipykernel_launcher` (this interpreter, whatever
    kernelspecs the user has installed) with KERNEL_ENV, under the kernelspec name python3. Where pyzmq has
    CurveZMQ, the manager provisions keys: the kernel then runs encrypted and has nothing to warn about
    ("Kernel is running over TCP without encryption", ipykernel's kernelapp, once per kernel)."""
    import zmq
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class ThisInterpreter(KernelSpecManager):
        def get_kernel_spec(self, kernel_name):
            return KernelSpec(argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                              display_name=KERNELSPEC["display_name"], language="python", env=dict(KERNEL_ENV),
                              metadata={"supported_encryption": ["curve"]}, resource_dir="")

    class RenderKernelManager(AsyncKernelManager):
        @default("kernel_spec_manager")
        def _default_ksm(self):
            return ThisInterpreter()

        @default("transport_encryption")
        def _default_encryption(self):
            return "auto" if zmq.has("curve") else "disabled"

    return RenderKernelManager


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass
class Failure:
    name: str
    summary: str  # one line
    log: Path | None


def _failure_line(name: str, nb, exc: BaseException) -> str:
    """'NAME: cell 7 (`first line`) raised Error: message' from the executed (partial) notebook."""
    where = ""
    for i, cell in enumerate(nb.cells if nb is not None else []):
        if cell.cell_type == "code" and any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            first = next((line.strip() for line in cell.source.splitlines() if line.strip()), "")
            if len(first) > 80:
                first = first[:77] + "..."
            where = f"cell {i} (`{first}`) "
            break
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    if ename:
        last = f"{ename}: {evalue}" if evalue else ename
    else:
        lines = [line for line in _ANSI.sub("", str(exc)).strip().splitlines() if line.strip()]
        last = lines[-1].strip() if lines else type(exc).__name__
        if not last.startswith(type(exc).__name__):
            last = f"{type(exc).__name__}: {last}"
    last = " ".join(_ANSI.sub("", last).split())
    if len(last) > 300:
        last = last[:297] + "..."
    return f"{name}: {where}raised {last}"


def _execute(nb, cwd: Path, timeout: int) -> None:
    from nbclient import NotebookClient

    NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                   kernel_manager_class=_kernel_manager_class(),
                   resources={"metadata": {"path": str(cwd)}}).execute()


def _prepare(src: Path):
    """The notebook built from its .py, as jupytext writes the .ipynb half of the pair (the repository's
    jupytext.toml applied, no text_representation), with stable cell ids and the python3 kernelspec."""
    import jupytext
    from jupytext.config import load_jupytext_config

    try:
        config = load_jupytext_config(str(src))
    except Exception:  # an unreadable config must not stop a render: the .py is read as written
        config = None
    nb = jupytext.read(src, config=config)
    for i, cell in enumerate(nb.cells):  # stable ids: re-rendering must not rewrite every cell of the diff
        cell["id"] = f"cell-{i:03d}"
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    meta = nb.metadata.setdefault("jupytext", {})
    meta["formats"] = FORMATS
    meta.pop("text_representation", None)  # jupytext drops it from the .ipynb on every save in Lab
    return nb


def _write_html(nb, name: str, title: str, heading_cell: int | None, page: Path, index: Path, traces: Path):
    import copy

    import nbformat
    from nbconvert import HTMLExporter

    shown = copy.deepcopy(nb)
    block = nbformat.v4.new_raw_cell(_page_header(name, page, index, traces), metadata={"raw_mimetype": "text/html"})
    shown.cells.insert(0 if heading_cell is None else heading_cell + 1, block)
    body, _ = HTMLExporter().from_notebook_node(shown, resources={"metadata": {"name": title}})
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(body, encoding="utf-8")


def write_index(root: Path, html_dir: Path, stage_lists: dict[str, list[str]] | None = None) -> Path:
    """html_dir/index.html: one line per notebook under `root`, in reading order: its title, linked to its page
    where that exists, and the first sentence of its intro."""
    import jupytext

    html_dir = Path(html_dir)
    known = discover(root)
    rows, section = [], None
    for name in reading_order(known, stage_lists):
        folder = name.split("/")[0] if "/" in name else ""
        if folder != section:
            if rows:
                rows.append("</ul>")
            if folder:
                rows.append(f"<h2>{html.escape(folder)}</h2>")
            rows.append("<ul>")
            section = folder
        title, intro, _ = title_and_intro(jupytext.read(known[name]))
        label = html.escape(_plain(title) if title else name)
        page = html_dir / f"{name}.html"
        link = (f'<a href="{html.escape(Path(name).as_posix())}.html">{label}</a>' if page.exists()
                else f"{label} <em>(not rendered)</em>")
        intro_html = f" &mdash; {_markdown_inline(intro)}" if intro else ""
        rows.append(f'<li><code class="nb">{html.escape(name)}</code> {link}{intro_html}</li>')
    if rows:
        rows.append("</ul>")
    text = ("<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n<title>wanopt notebooks</title>\n"
            "<style>body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;line-height:1.45}"
            "li{margin:.35em 0}code.nb{color:#777;font-size:.85em;margin-right:.4em}</style>\n</head>\n<body>\n"
            "<h1>wanopt notebooks</h1>\n<p>In reading order. Each page is a rendered copy of "
            "<code>notebooks/&lt;name&gt;.ipynb</code>.</p>\n" + "\n".join(rows) + "\n</body>\n</html>\n")
    html_dir.mkdir(parents=True, exist_ok=True)
    out = html_dir / "index.html"
    out.write_text(text, encoding="utf-8")
    return out


# ------------------------------------------------------------------------------------------------ render

def render(names=None, root: Path = NOTEBOOKS, html_dir: Path | None = HTML_DIR, timeout: int = 1800, *,
           traces: Path = TRACES, log_dir: Path | None = LOG_DIR, sync: bool = False, verbose: bool = False,
           stage_lists: dict[str, list[str]] | None = None, out=None, err=None) -> list[Path]:
    """Render the notebooks that `names` select (all when None) under `root`, in reading order; return the
    .ipynb written. Raises RenderError, before executing anything, for an unknown or ambiguous name and for a
    .ipynb with edits its .py lacks (unless `sync`: then the .py is synced from it first); and, after the other
    notebooks rendered, when a notebook failed (one line each on `err`, the full traceback in log_dir)."""
    out = out or sys.stdout
    err = err or sys.stderr
    root = Path(root)
    known = discover(root)
    if not known:
        raise RenderError(f"no notebooks (jupytext percent .py files) under {root}")
    if stage_lists is None:
        stage_lists = load_stage_lists({n.split("/")[0] for n in known if "/" in n})
    ordered = reading_order(known, stage_lists)
    if isinstance(names, str):
        names = [names]
    chosen = select([_normalize_query(n, root) for n in names], ordered) if names else ordered

    stale = [(name, ipynb) for name in chosen if (ipynb := unsynced(known[name])) is not None]
    if stale and not sync:
        raise RenderError("\n".join(
            f"{name}: {_display_path(ipynb)} is newer than its .py and its cells differ (edited in Jupyter?); "
            f"run `jupytext --sync {_display_path(ipynb)}` first, or `python -m wanopt render --sync`"
            for name, ipynb in stale))
    for name, ipynb in stale:
        print(f"sync {name}: {_display_path(known[name])} <- {_display_path(ipynb)}", file=out, flush=True)
        sync_from_ipynb(ipynb)

    html_dir = Path(html_dir) if html_dir is not None else None
    done, failures = [], []
    for k, name in enumerate(chosen, 1):
        src = known[name]
        print(f"[{k}/{len(chosen)}] {name} ...", end="", file=out, flush=True)
        start = time.monotonic()
        nb = None
        page = html_dir / f"{name}.html" if html_dir is not None else None
        log = Path(log_dir) / f"{name}.log" if log_dir is not None else None
        try:
            nb = _prepare(src)
            _execute(nb, src.parent, timeout)
        except Exception as exc:
            import traceback

            elapsed = time.monotonic() - start
            print(f" FAILED ({elapsed:.0f} s)", file=out, flush=True)
            full = _ANSI.sub("", "".join(traceback.format_exception(exc)))
            if log is not None:
                log.parent.mkdir(parents=True, exist_ok=True)
                log.write_text(full, encoding="utf-8")
            if page is not None and page.exists():
                page.unlink()  # no stale page of a notebook that no longer runs
            line = _failure_line(name, nb, exc)
            where = f"; full traceback in {_display_path(log)}" if log is not None else ""
            if verbose:
                print(full, file=err, flush=True)
            print(f"error: {line}{where}", file=err, flush=True)
            failures.append(Failure(name, line, log))
            continue
        for key in ("language_info",):
            nb.metadata.get(key, {}).pop("version", None)
        import nbformat

        ipynb = src.with_suffix(".ipynb")
        nbformat.write(nb, ipynb)
        if page is not None:
            title, _, heading_cell = title_and_intro(nb)
            _write_html(nb, name, _plain(title) if title else name, heading_cell, page, html_dir / "index.html",
                        traces)
        if log is not None and log.exists():
            log.unlink()
        done.append(ipynb)
        print(f" {time.monotonic() - start:.0f} s", file=out, flush=True)

    if html_dir is not None:
        if not names:  # a full render: pages of notebooks that no longer exist go too
            for page in html_dir.rglob("*.html"):
                rel = page.relative_to(html_dir).with_suffix("").as_posix()
                if rel != "index" and rel not in known:
                    page.unlink()
        index = write_index(root, html_dir, stage_lists)
        print(f"html: {_display_path(index)}", file=out, flush=True)
    if failures:
        logs = f" (full tracebacks in {_display_path(Path(log_dir))}/)" if log_dir is not None else ""
        raise RenderError(f"{len(failures)} of {len(chosen)} notebooks failed: "
                          f"{', '.join(f.name for f in failures)}{logs}")
    return done


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wanopt render", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*",
                        help="notebook names (t2v/05_attention), unique parts of them, or family folders "
                             "(default: all)")
    parser.add_argument("--sync", action="store_true",
                        help="when a .ipynb holds edits its .py lacks, update the .py from it first (jupytext "
                             "--sync) instead of refusing")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print the full traceback of a failing notebook (it is always written to "
                             f"{_display_path(LOG_DIR)}/<name>.log)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell (default 1800)")
    args = parser.parse_args(argv)
    try:
        render(args.notebooks or None, timeout=args.timeout, sync=args.sync, verbose=args.verbose)
    except RenderError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
