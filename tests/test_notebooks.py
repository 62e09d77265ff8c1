"Run every notebook under nbs/ as a test, one pytest case each (nbdev_test itself prints no count)."
from pathlib import Path
import pytest
import nbdev.test as nbt  # imported as a module so pytest does not collect `test_nb` itself

NBS = Path(__file__).resolve().parents[1] / "nbs"
NOTEBOOKS = sorted(p for p in NBS.rglob("*.ipynb")
                   if not any(part.startswith(("_", ".")) for part in p.relative_to(NBS).parts))

@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[str(p.relative_to(NBS)) for p in NOTEBOOKS])
def test_notebook(nb, monkeypatch):
    monkeypatch.chdir(nb.parent)
    ok, secs = nbt.test_nb(nb, skip_flags=["notest", "gpu", "hub", "slow"], force_flags=[], do_print=False)
    assert ok, f"notebook {nb.name} failed (run `nbdev_test --path {nb}` to see the error)"
