"What the tool reads is treated as data: a model's own code runs only when asked, broken files give clear errors."
import json, os, subprocess, sys
from pathlib import Path

import pytest

from conftest import WIKITEXT as TEXT, depthprune
needs_text = pytest.mark.skipif(not TEXT.exists(), reason=f"WikiText-2 test text not found at {TEXT}")


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from depthprune_nb.testing import save_tiny_model
    return save_tiny_model(tmp_path_factory.mktemp("models") / "llama", family="llama", num_layers=4)


CONFIG_PY = '''
from pathlib import Path
Path({marker!r}).write_text("the model's own code ran")
from transformers import LlamaConfig
class MarkerConfig(LlamaConfig):
    model_type = "marker_llama"
'''
MODELING_PY = '''
from transformers import LlamaForCausalLM
from .configuration_marker import MarkerConfig
class MarkerForCausalLM(LlamaForCausalLM):
    config_class = MarkerConfig
'''


@pytest.fixture
def coded_model(tiny_llama, tmp_path):
    "A copy of a tiny Llama whose config names its own modules; importing them writes a marker file."
    import shutil
    d, marker = tmp_path / "coded", tmp_path / "marker.txt"
    shutil.copytree(tiny_llama, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(model_type="marker_llama", architectures=["MarkerForCausalLM"],
               auto_map={"AutoConfig": "configuration_marker.MarkerConfig",
                         "AutoModelForCausalLM": "modeling_marker.MarkerForCausalLM"})
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "configuration_marker.py").write_text(CONFIG_PY.format(marker=str(marker)))
    (d / "modeling_marker.py").write_text(MODELING_PY)
    return d, marker, {"HF_MODULES_CACHE": str(tmp_path / "modules")}


@needs_text
def test_model_code_runs_only_with_the_flag(coded_model, tmp_path):
    d, marker, env = coded_model
    args = ["--model_dir", d, "--text_file", TEXT, "--delete_layer_num", 1, "--nsamples", 4, "--seqlen", 64, "--quiet"]
    r = depthprune(*args, "--save_dir", tmp_path / "out", env=env)
    assert r.returncode != 0
    assert "--trust_remote_code" in r.stderr and "trust_remote_code=True" in r.stderr
    assert "configuration_marker.py" in r.stderr and "modeling_marker.py" in r.stderr
    assert not marker.exists(), "the model's code ran without --trust_remote_code"
    assert not (tmp_path / "out").exists()

    r = depthprune(*args, "--save_dir", tmp_path / "out", "--trust_remote_code", env=env)
    assert r.returncode == 0, r.stderr
    assert marker.exists() and "<- best" in r.stdout
    saved = json.loads((tmp_path / "out" / "prune_result.json").read_text())
    assert saved["num_layers_after"] == 3


def test_python_loaders_refuse_model_code_by_default(coded_model):
    from depthprune_nb.cli.prune import load_model
    from depthprune_nb.io.hub import RemoteCodeError, load_tokenizer
    d, marker, env = coded_model
    for load in (load_model, load_tokenizer):
        with pytest.raises(RemoteCodeError, match="trust_remote_code=True"): load(d)
    assert not marker.exists()


# Files read are data: broken inputs fail with the file's name, before anything is written.

def truncated(src:Path, dst:Path)->Path:
    data = src.read_bytes()
    dst.write_bytes(data[:len(data) // 2])
    return dst


def test_truncated_config_json_is_named_and_nothing_is_written(tiny_llama, tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"delete_layer_num": 2, "model_decoder_layers": "model.layers"}))
    truncated(cfg, tmp_path / "cut.json")
    r = depthprune("--model_dir", tiny_llama, "--config", tmp_path / "cut.json", "--save_dir", tmp_path / "out", "--quiet")
    assert r.returncode == 2 and "cut.json" in r.stderr and "not valid JSON" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("how", ["truncated", "not an object", "wrong keys", "binary"])
def test_broken_result_json_is_named(tmp_path, how):
    from depthprune_nb import PruneResult
    r = PruneResult(delete_layer_num=1, baseline_ppl=10.0, ppl_by_start={0: 12.0, 1: 11.0},
                    deleted_layers=[1], num_layers_before=2, num_layers_after=1,
                    params_before=100, params_after=60)
    good = tmp_path / "good.json"
    r.to_json(good)
    bad = tmp_path / "bad.json"
    if how == "truncated": truncated(good, bad)
    elif how == "not an object": bad.write_text("[1, 2]")
    elif how == "wrong keys": bad.write_text(json.dumps({**json.loads(good.read_text()), "ppl": 3}))
    else: bad.write_bytes(b"\xff\xfe\x00garbage")
    before = bad.read_bytes()
    with pytest.raises(ValueError, match="bad.json"): PruneResult.from_json(bad)
    assert bad.read_bytes() == before
    assert PruneResult.from_json(good) == r


def test_truncated_safetensors_in_a_pruned_save_gives_a_clear_error(tiny_llama, tmp_path):
    import shutil
    d = tmp_path / "pruned"
    shutil.copytree(tiny_llama, d)
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    w = d / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[:len(data) // 2])
    before["model.safetensors"] = w.read_bytes()
    r = depthprune("--model_dir", d, "--quiet")
    assert r.returncode == 2, r.stderr
    assert "could not load a causal LM" in r.stderr and str(d) in r.stderr and "truncated" in r.stderr, r.stderr
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before, "a failed load changed the model folder"


def test_no_pickle_in_the_package():
    "The package parses files as data: no pickle, no torch.load that could unpickle code."
    import re
    src = Path(__file__).resolve().parents[1] / "depthprune_nb"
    for p in src.glob("*.py"):
        text = p.read_text()
        assert not re.search(r"\bimport pickle\b|\bpickle\.load|\bdill\b|\bcloudpickle\b", text), p.name
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            assert "weights_only=True" in m.group(1), f"{p.name}: torch.load without weights_only=True"


# Nothing the user owns is lost: save folders.

def snapshot(d:Path)->dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where", ["parent", "child", "same"])
def test_the_source_folder_its_parents_and_children_are_refused(tiny_llama, where):
    save = {"parent": tiny_llama.parent, "child": tiny_llama / "pruned", "same": tiny_llama}[where]
    before = snapshot(tiny_llama.parent)
    r = depthprune("--model_dir", tiny_llama, "--save_dir", save, "--overwrite", "--quiet")
    assert r.returncode == 2 and "loaded from" in r.stderr, r.stderr
    assert snapshot(tiny_llama.parent) == before


def test_a_folder_with_the_users_files_is_refused_without_overwrite(tiny_llama, tmp_path):
    d = tmp_path / "mine"; d.mkdir(); (d / "thesis.tex").write_text("years of work")
    r = depthprune("--model_dir", tiny_llama, "--save_dir", d, "--quiet")
    assert r.returncode == 2 and "is not empty (thesis.tex)" in r.stderr and "--overwrite" in r.stderr, r.stderr
    assert snapshot(d) == {"thesis.tex": b"years of work"}


def test_overwrite_replaces_checkpoint_files_only_and_drops_stale_shards(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from depthprune_nb import PruneResult, save_pruned
    model, tok = AutoModelForCausalLM.from_pretrained(tiny_llama), AutoTokenizer.from_pretrained(tiny_llama)
    d = tmp_path / "out"
    r = PruneResult(delete_layer_num=1, baseline_ppl=10.0, ppl_by_start={0: 12.0},
                    deleted_layers=[0], num_layers_before=4, num_layers_after=3,
                    params_before=100, params_after=60)
    save_pruned(model, d, tok, r)
    # an earlier, larger save left two shards and their index; the user added notes and a sub-folder
    for f in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json"):
        (d / f).write_bytes(b"stale")
    (d / "notes.md").write_text("mine"); (d / "plots").mkdir(); (d / "plots" / "a.png").write_bytes(b"png")
    with pytest.raises(FileExistsError, match="already holds a model saved by depthprune_nb"): save_pruned(model, d, tok, r)
    save_pruned(model, d, tok, r, overwrite=True)
    names = sorted(p.name for p in d.iterdir())
    assert "notes.md" in names and "plots" in names and (d / "plots" / "a.png").read_bytes() == b"png"
    assert not [n for n in names if n.startswith("model-") or n.endswith(".index.json")], names
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    re, info = AutoModelForCausalLM.from_pretrained(d, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_a_failed_save_leaves_the_earlier_model_as_it_was(tiny_llama, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM
    from depthprune_nb import save_pruned
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    d = tmp_path / "out"
    save_pruned(model, d)
    before = snapshot(d)
    real = type(model).save_pretrained
    def half_then_fail(self, path, **kw):
        real(self, path, **kw)
        (Path(path) / "model.safetensors").write_bytes(b"half a file")
        raise OSError("No space left on device")
    monkeypatch.setattr(type(model), "save_pretrained", half_then_fail)
    for target in (d, tmp_path / "new"):
        with pytest.raises(OSError, match="No space left"): save_pruned(model, target, overwrite=True)
    assert snapshot(d) == before and not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_config_edited_to_more_layers_than_the_weights_hold_is_refused(tiny_llama, tmp_path):
    "transformers would fill the missing layer with random weights and only log a warning."
    import shutil
    d = tmp_path / "edited"
    shutil.copytree(tiny_llama, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["num_hidden_layers"] += 1
    (d / "config.json").write_text(json.dumps(cfg))
    before = snapshot(d)
    r = depthprune("--model_dir", d, "--quiet")
    assert r.returncode == 2 and "do not match the model it describes" in r.stderr and "missing" in r.stderr, r.stderr
    assert snapshot(d) == before
