"""`gpt2 notebooks`: the course's notebooks (notebooks/ in the source checkout), listed or executed.

    gpt2 notebooks                          # the index: chapter, file, title
    gpt2 notebooks --execute                # run every notebook top to bottom, save the outputs in the files
    gpt2 notebooks --execute 02 05_training # only these (a chapter number or a file stem)
    gpt2 notebooks --execute --full         # also the slow bits (each notebook's FULL flag)

Executing runs each notebook in a fresh Jupyter kernel (nbclient) with the notebook's folder as the working
directory, then writes the executed notebook back in place (a temp file, then rename), so the outputs and plots
render on a code-hosting site. A cell that raises (a failed check) stops that notebook and the command exits 1,
leaving the file as it was.

The slow bits of a notebook sit behind `FULL = os.environ.get("GPT2_NOTEBOOKS_FULL") == "1"` in its first code
cell; --full sets that variable for the kernels.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from gpt2cli.errors import UserError

FULL_ENV = "GPT2_NOTEBOOKS_FULL"
KERNEL_NAME = "python3"
DEFAULT_CELL_TIMEOUT_S = 600


def register(subparsers):
    parser = subparsers.add_parser(
        "notebooks", help="list the course's notebooks, or execute them and save their outputs",
        description="The course: one notebook per chapter in notebooks/. Without --execute, prints the index; "
                    "with it, runs the notebooks top to bottom in fresh kernels and saves the outputs in place.")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="chapters to act on: a number (2, 02) or a file stem (02_attention); default all")
    parser.add_argument("--execute", action="store_true",
                        help="run the notebooks and write their outputs back into the files")
    parser.add_argument("--full", action="store_true",
                        help=f"also run the slow bits (sets {FULL_ENV}=1, each notebook's FULL flag)")
    parser.add_argument("--dir", metavar="DIR", default=None,
                        help="the notebooks folder (default: notebooks/ of this source checkout)")
    parser.add_argument("--timeout", type=int, default=DEFAULT_CELL_TIMEOUT_S, metavar="S",
                        help=f"seconds one cell may run before it fails (default {DEFAULT_CELL_TIMEOUT_S})")
    parser.set_defaults(func=run)


def default_notebooks_dir() -> Path:
    """notebooks/ beside the gpt2cli package: present in a source checkout (editable install)."""
    return Path(__file__).resolve().parents[2] / "notebooks"


def find_notebooks(folder: Path) -> list[Path]:
    """The chapters in order: notebooks/NN_slug.ipynb, sorted by file name."""
    return sorted(path for path in folder.glob("*.ipynb") if path.stem[:2].isdigit())


def select_notebooks(notebooks: list[Path], names: list[str]) -> list[Path]:
    """The notebooks NAMES pick (a chapter number or a file stem), in chapter order; every name must match."""
    if not names:
        return notebooks
    chosen = []
    for name in names:
        matches = [path for path in notebooks
                   if path.stem == name or (name.isdigit() and int(path.stem[:2]) == int(name))]
        if not matches:
            known = ", ".join(path.stem for path in notebooks)
            raise UserError(f"no notebook {name!r}; the chapters are: {known}")
        chosen.extend(match for match in matches if match not in chosen)
    return sorted(chosen)


def notebook_title(path: Path) -> str:
    """The first Markdown heading of the notebook (its title), or its file stem."""
    cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
    for cell in cells:
        if cell.get("cell_type") == "markdown":
            for line in "".join(cell.get("source", "")).splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return path.stem


@contextlib.contextmanager
def environment(overrides: dict[str, str]):
    """os.environ with OVERRIDES for the block: the kernels nbclient starts inherit it."""
    saved = {key: os.environ.get(key) for key in overrides}
    os.environ.update(overrides)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def execute_notebook(path: Path, *, timeout: int = DEFAULT_CELL_TIMEOUT_S, full: bool = False,
                     prelude: str | None = None, save: bool = False):
    """Run the notebook at PATH top to bottom in a fresh kernel; return the executed notebook node.

    prelude: source of an extra first code cell (tests plant bugs with it; never saved).
    save: write the executed notebook back to PATH (temp file + rename; not allowed with a prelude).
    A failing cell raises nbclient.exceptions.CellExecutionError and nothing is written.
    """
    import nbformat
    from nbclient import NotebookClient

    if save and prelude is not None:
        raise ValueError("a notebook run with a planted prelude is never saved")
    notebook = nbformat.read(path, as_version=4)
    if prelude is not None:
        notebook.cells.insert(0, nbformat.v4.new_code_cell(prelude))
    client = NotebookClient(notebook, timeout=timeout, kernel_name=KERNEL_NAME, record_timing=False,
                            resources={"metadata": {"path": str(path.parent)}})
    with environment({FULL_ENV: "1" if full else "0", "MPLBACKEND": "module://matplotlib_inline.backend_inline"}):
        client.execute()
    if save:
        temporary = path.with_name(f".{path.name}.tmp")
        nbformat.write(notebook, temporary)
        os.replace(temporary, path)
    return notebook


def run(args) -> int:
    folder = Path(args.dir).expanduser().resolve() if args.dir else default_notebooks_dir()
    notebooks = find_notebooks(folder) if folder.is_dir() else []
    if not notebooks:
        raise UserError(f"no notebooks (NN_name.ipynb) in {folder}; they ship in the source checkout: clone the "
                        f"repository and install it with `pip install -e \".[notebooks]\"`, or pass --dir")
    chosen = select_notebooks(notebooks, args.names)
    if not args.execute:
        for path in chosen:
            print(f"{path.stem[:2]}  {path.name:<32} {notebook_title(path)}")
        return 0
    try:
        from nbclient.exceptions import CellExecutionError
    except ImportError as error:
        raise UserError(f"executing notebooks needs nbclient and ipykernel ({error}); install them with "
                        f"`pip install -e \".[notebooks]\"`") from None
    failed = []
    for path in chosen:
        started = time.perf_counter()
        print(f"executing {path.name} ...", flush=True)
        try:
            execute_notebook(path, timeout=args.timeout, full=args.full, save=True)
        except CellExecutionError as error:
            failed.append(path.name)
            print(f"  FAILED after {time.perf_counter() - started:.1f} s (file left as it was):\n{error}")
            continue
        print(f"  ok in {time.perf_counter() - started:.1f} s, outputs saved")
    if failed:
        print(f"{len(failed)} of {len(chosen)} notebooks failed: {', '.join(failed)}")
        return 1
    print(f"all {len(chosen)} notebooks executed and saved")
    return 0
