import os
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("MPLBACKEND", "Agg")

import subprocess, sys
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # the project's data folder beside the checkout
SHARED_WIKITEXT = SHARED_DATA / "wikitext-2-raw-v1" / "test.txt"


def _wikitext()->Path:
    "The project's copy where it lies beside the checkout, else the copy shipped in the package (the same bytes, sha256 checked)."
    if SHARED_WIKITEXT.exists(): return SHARED_WIKITEXT
    from depthprune_nb.data import shipped_wikitext
    try: return shipped_wikitext()
    except FileNotFoundError: return SHARED_WIKITEXT  # neither: the tests that need it skip, naming this path

WIKITEXT = _wikitext()


@pytest.fixture(scope="session")
def wikitext()->Path:
    "The WikiText-2 test text (../shared/data beside the checkout, else the package's copy); a test that asks for it is skipped where both are absent."
    if not WIKITEXT.exists(): pytest.skip(f"WikiText-2 test text not found at {WIKITEXT}")
    return WIKITEXT


def depthprune(*args, env:dict|None=None, timeout:int=900)->subprocess.CompletedProcess:
    "Run the command line (`depthprune_nb.cli.prune.main`) in a fresh Python, as a user's shell would; output captured as text."
    return subprocess.run([sys.executable, "-c", "import sys; from depthprune_nb.cli.prune import main; sys.exit(main())", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def one_thread():
    "Tiny models: with two threads, each attention call spends more on hand-offs than on work."
    import torch
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def family_checkpoint(tmp_path_factory):
    "`get(family, num_layers)`: a tiny model of `family` saved once per session (weights drawn with std 0.1)."
    from depthprune_nb.testing import save_tiny_model
    made = {}
    def get(family:str, num_layers:int):
        if (family, num_layers) not in made:
            made[family, num_layers] = save_tiny_model(tmp_path_factory.mktemp(family), family=family, num_layers=num_layers, init_std=0.1)
        return made[family, num_layers]
    return get
