"Load: many windows stay within the memory budget; CLI runs back to back do not grow memory or leave files behind."
import gc, os, tempfile
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from depthprune_nb import fast_search
from depthprune_nb.testing import save_tiny_model

from conftest import WIKITEXT as TEXT
RUNS = int(os.environ.get("DEPTHPRUNE_LOAD_RUNS", "10"))           # 50 for the full check
WINDOWS = int(os.environ.get("DEPTHPRUNE_LOAD_WINDOWS", "160"))    # 1000 or more for the full check


def rss()->int:
    "Resident memory now, in bytes."
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_many_windows_stay_within_the_memory_budget(tmp_path):
    model = AutoModelForCausalLM.from_pretrained(save_tiny_model(tmp_path / "m", family="llama", num_layers=6)).eval()
    g = torch.Generator().manual_seed(0)
    data = [torch.randint(0, model.config.vocab_size, (1, 16), generator=g) for _ in range(WINDOWS)]
    budget = 160 * 1024  # states of a few samples only: many small chunks
    st = fast_search(model, data, 2, memory_budget=budget, progress=False).stats
    assert st["num_chunks"] >= WINDOWS // 8 and 0 < st["peak_state_bytes"] <= budget, st


@pytest.mark.skipif(not TEXT.exists(), reason=f"WikiText-2 test text not found at {TEXT}")
def test_cli_runs_back_to_back_keep_memory_and_files(tmp_path, capsys, monkeypatch):
    from depthprune_nb.cli.prune import main
    (tmp_path / "tmp").mkdir(); monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # a private temp folder to watch
    model = save_tiny_model(tmp_path / "m", family="llama", num_layers=4)
    text = tmp_path / "t.txt"; text.write_text(TEXT.read_text()[:6000])
    def files(): return sorted(str(p) for p in tmp_path.rglob("*"))  # the temp folder, the model, outputs, checkpoint
    def once(i):
        out = tmp_path / "out"
        assert main(["--model_dir", str(model), "--text_file", str(text), "--delete_layer_num", "1", "--nsamples", "3",
                     "--seqlen", "32", "--quiet", "--save_dir", str(out), "--overwrite",
                     "--checkpoint_dir", str(tmp_path / "ck"), "--resume", "--result_json", str(tmp_path / "r.json")]) == 0
        capsys.readouterr(); gc.collect()
    for i in range(3): once(i)  # warm-up: caches, lazy imports
    before_mem, before_files = rss(), files()
    for i in range(RUNS): once(i)
    grown = rss() - before_mem
    assert files() == before_files, "a run left files behind"
    assert grown < 40 * 2**20, f"resident memory grew by {grown / 2**20:.1f} MiB over {RUNS} runs"
    print(f"{RUNS} runs: resident memory grew by {grown / 2**20:.2f} MiB; no new files")
