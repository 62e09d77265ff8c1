"""Run every notebook under nbs/ as a test, one pytest case each (nbdev_test itself prints no count).

Tutorials read their model and text from DEPTHPRUNE_* environment variables; here they point at a
tiny random OPT saved to a temporary folder and at the local WikiText-2 copy in ../shared/data.
"""
import os
from pathlib import Path

import pytest
import nbdev.test as nbt  # imported as a module so pytest does not collect `test_nb` itself

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
from conftest import WIKITEXT as TEXT
NOTEBOOKS = sorted(p for p in NBS.rglob("*.ipynb")
                   if not any(part.startswith(("_", ".")) for part in p.relative_to(NBS).parts))


@pytest.fixture(scope="session")
def tutorial_env(tmp_path_factory):
    "Parameters that make the tutorials run offline on a tiny model in seconds."
    from depthprune_nb.testing import save_tiny_model
    base = tmp_path_factory.mktemp("tutorials")
    return {"DEPTHPRUNE_MODEL": str(save_tiny_model(base / "tiny-opt", family="opt", num_layers=6)),
            "DEPTHPRUNE_TEXT_FILE": str(TEXT), "DEPTHPRUNE_NSAMPLES": "16", "DEPTHPRUNE_SEQLEN": "256",
            "DEPTHPRUNE_SAVE_DIR": str(base / "saved"), "DEPTHPRUNE_DEMO_DIR": str(base / "demo"),
            "DEPTHPRUNE_QUICK": "1"}


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[str(p.relative_to(NBS)) for p in NOTEBOOKS])
def test_notebook(nb, monkeypatch, request):
    if "tutorials" in nb.parts:
        if not TEXT.exists(): pytest.skip(f"tutorials need the WikiText-2 text at {TEXT}")
        for k, v in request.getfixturevalue("tutorial_env").items(): monkeypatch.setenv(k, v)
    monkeypatch.chdir(nb.parent)
    ok, secs = nbt.test_nb(nb, skip_flags=["notest", "gpu", "hub", "slow"], force_flags=[], do_print=False)
    assert ok, f"notebook {nb.relative_to(NBS)} failed (its traceback is in the captured stderr above)"
