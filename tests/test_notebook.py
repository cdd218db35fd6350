"""examples/wine_gpt.ipynb runs top to bottom on a tiny model (nbclient + ipykernel)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import tiny_model_dir

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "wine_gpt.ipynb"


def test_notebook_executes(tmp_path, monkeypatch):
    model_dir = tiny_model_dir(tmp_path / "model")
    monkeypatch.setenv("GPTLAB_MODEL", str(model_dir))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the kernel imports this checkout's gptlab
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    html = [o["data"]["text/html"] for o in outputs if o.output_type == "execute_result" and "text/html" in o.get("data", {})]
    assert any('class="gptlab-trace"' in h for h in html), "the trace displays inline"
    assert any("entropy (bits)" in h for h in html), "the temperature table displays inline"
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "wine review : us" in text and "0.484" in text and "0.397" in text
