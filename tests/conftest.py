import os
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("MPLBACKEND", "Agg")

from pathlib import Path

import pytest

WIKITEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2-raw-v1" / "test.txt"


@pytest.fixture(scope="session")
def wikitext()->Path:
    "The local WikiText-2 test text (../shared/data beside the checkout); a test that asks for it is skipped where it is absent."
    if not WIKITEXT.exists(): pytest.skip(f"WikiText-2 test text not found at {WIKITEXT}")
    return WIKITEXT
