"""Every tutorial notebook runs end to end in smoke mode (ZOO_SMOKE=1: tiny step counts)."""

import os
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

TUTORIALS = sorted((Path(__file__).resolve().parents[1] / "tutorials").glob("*.ipynb"))


def test_python3_kernel_is_found():
    # ipykernel (a dev extra) installs the 'python3' spec into the environment, and
    # jupyter_client falls back to the running interpreter for 'python3' regardless
    from jupyter_client.kernelspec import KernelSpecManager

    assert KernelSpecManager().get_kernel_spec("python3").language == "python"


def test_there_are_tutorials():
    names = {p.stem for p in TUTORIALS}
    assert {"eight_schools", "vae_digits"} <= names


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs_in_smoke_mode(path, monkeypatch):
    monkeypatch.setenv("ZOO_SMOKE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # one thread per kernel: the suite runs one notebook per pytest worker, and torch's
    # default (all cores per process) oversubscribes the CPU many times over
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(path, as_version=4)
    assert any("ZOO_SMOKE" in cell.source for cell in nb.cells if cell.cell_type == "code")
    client = nbclient.NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors
    assert os.environ["ZOO_SMOKE"] == "1"


#: what a developer's machine leaks into an output: a home, a virtual environment, packages
MACHINE_PATH = re.compile(r"(/work/|/home/|/root/|/Users/|site-packages|\.venv/)")


def _output_text(output) -> str:
    """The readable text of an output (never image data: base64 may hold any letters)."""
    if output.get("output_type") == "stream":
        return output.get("text", "")
    if output.get("output_type") == "error":
        return "\n".join(output.get("traceback", []))
    data = output.get("data", {})
    return "\n".join(
        str(data.get(kind, "")) for kind in ("text/plain", "text/html", "text/markdown")
    )


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_committed_outputs_show_no_machine_paths(path):
    nb = nbformat.read(path, as_version=4)
    leaks = [
        MACHINE_PATH.search(_output_text(out)).group(0)
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if MACHINE_PATH.search(_output_text(out))
    ]
    assert not leaks, f"{path.name}: outputs show {sorted(set(leaks))}"


def _figure_cells(nb) -> tuple[int, int]:
    """``(cells that store an image, cells whose stored output is only a figure's repr)``:
    a ``<Figure size ...>`` text without its image means the plot was drawn under a
    non-inline backend and lost."""
    images = lost = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        data = [out.get("data", {}) for out in cell.get("outputs", [])]
        if any("image/png" in d or "image/svg+xml" in d for d in data):
            images += 1
        elif any(str(d.get("text/plain", "")).startswith("<Figure size") for d in data):
            lost += 1
    return images, lost


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_executed_tutorial_stores_its_figures(path):
    """Every tutorial shows at least one figure, and none was lost to a non-inline backend
    (``make tutorial`` executes with the inline one)."""
    images, lost = _figure_cells(nbformat.read(path, as_version=4))
    assert images, f"{path.name} stores no figure: re-execute it with `make tutorial`"
    assert not lost, f"{path.name}: {lost} figure(s) shown as text only"
