"""python -m wanopt render: rebuild every notebook from its paired .py (jupytext percent), execute it on this
machine (CPU is enough: the notebooks read committed traces and run the tiny models), write the executed
.ipynb in place (the committed outputs that `pytest --nbval` compares) and an HTML copy under build/html/."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def render(names=None, html_dir: Path | None = ROOT / "build" / "html", timeout: int = 1800) -> list[Path]:
    import jupytext
    import nbformat
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter

    os.environ["IPYKERNEL_CELL_NAME"] = "<IPY-INPUT>"  # warnings name the cell, not a temp file (nbval)
    os.environ["TQDM_DISABLE"] = "1"
    sources = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))
    if names:
        sources = [p for p in sources if any(n in p.name for n in names)]
        if not sources:
            raise SystemExit(f"no notebook matches {names}; notebooks: {[p.stem for p in NOTEBOOKS.glob('*.py')]}")
    done = []
    for src in sources:
        print(f"render {src.stem}", flush=True)
        nb = jupytext.read(src)
        for i, cell in enumerate(nb.cells):  # stable ids: re-rendering must not rewrite every cell of the diff
            cell["id"] = f"cell-{i:03d}"
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.metadata.setdefault("jupytext", {})["formats"] = "ipynb,py:percent"
        NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                       resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
        for key in ("language_info",):
            nb.metadata.get(key, {}).pop("version", None)
        out = src.with_suffix(".ipynb")
        nbformat.write(nb, out)
        if html_dir is not None:
            html_dir.mkdir(parents=True, exist_ok=True)
            body, _ = HTMLExporter().from_notebook_node(nb)
            (html_dir / f"{src.stem}.html").write_text(body)
        done.append(out)
    return done


def main(argv=None) -> int:
    render(argv if argv else None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
