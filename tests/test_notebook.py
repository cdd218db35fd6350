"""examples/wine_gpt.ipynb: committed with its outputs, and it runs top to bottom from its own folder,
as Jupyter runs it, training a small model itself when there is none (nbclient + ipykernel)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "wine_gpt.ipynb"


def outputs_of(nb) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]


def check_outputs(nb) -> str:
    """The notebook's outputs show what it promises; returns the printed text."""
    outputs = outputs_of(nb)
    assert not [o for o in outputs if o.output_type == "error"]
    html = [o["data"]["text/html"] for o in outputs
            if o.output_type in ("execute_result", "display_data") and "text/html" in o.get("data", {})]
    assert any('class="gptlab-trace"' in h and "GptlabTraceView" in h and "logit lens" in h for h in html), \
        "the trace displays inline, with its interactive view and the logit lens"
    assert any("entropy (bits)" in h for h in html), "the temperature table displays inline"
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "wine review : us" in text and "0.484" in text and "0.397" in text
    assert "embeddings:" in text and "layer 2:" in text  # the logit lens, printed
    return text


def test_the_committed_notebook_carries_its_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs for c in code), "commit the notebook executed (every code cell with its output)"
    text = check_outputs(nb)
    assert str(ROOT) not in text and "/home/" not in text  # no paths of the machine it ran on


def test_the_notebook_runs_from_its_folder_and_trains_a_model_when_there_is_none(tmp_path, monkeypatch):
    model_dir = tmp_path / "demo"  # absent: the first cell trains a small model there
    # Named relative to the repository, as "runs/demo" is: read from examples/ it would land elsewhere.
    monkeypatch.setenv("GPTLAB_MODEL", os.path.relpath(model_dir, ROOT))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the kernel imports this checkout's gptlab
    monkeypatch.setenv("GPTLAB_DEMO_STEPS", "10")  # the path through training, not a model worth reading
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for c in nb.cells:
        if c.cell_type == "code":
            c.outputs = []
    # cwd = examples/, as Jupyter runs a notebook opened there.
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(ROOT / "examples")}})
    client.execute()
    text = check_outputs(nb)
    assert "training a small one" in text and (model_dir / "model.safetensors").is_file()
