"The `depthprune` console script end to end, as the README tells a newcomer to run it."
import json, subprocess, sys

import pytest
from conftest import depthprune


@pytest.fixture(scope="module")
def tiny_opt(tmp_path_factory):
    from depthprune_nb.testing import save_tiny_model
    return save_tiny_model(tmp_path_factory.mktemp("models") / "opt", family="opt", num_layers=6)


def test_prunes_saves_and_the_saved_model_generates(tiny_opt, tmp_path, wikitext):
    out = tmp_path / "out"
    r = depthprune("--model_dir", tiny_opt, "--text_file", wikitext, "--delete_layer_num", 2, "--save_dir", out,
                   "--nsamples", 24, "--quiet", "--prompt", "The tower is")
    assert r.returncode == 0, r.stderr
    assert "<- best" in r.stdout and "prune ratio" in r.stdout and "generation:" in r.stdout
    res = json.loads((out / "prune_result.json").read_text())
    assert res["num_layers_before"] == 6 and res["num_layers_after"] == 4
    assert len(res["ppl_by_start"]) == 5

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("The tower is", return_tensors="pt").input_ids
    a = model.generate(ids, max_new_tokens=8, do_sample=False, use_cache=True)
    b = model.generate(ids, max_new_tokens=8, do_sample=False, use_cache=False)
    assert a.shape[1] == ids.shape[1] + 8 and torch.equal(a, b)


def test_json_config_and_explicit_layers(tiny_opt, tmp_path, wikitext):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"delete_layer_num": 1, "model_decoder_layers": "model.decoder.layers",
                               "layer_norm_field": "model.decoder.final_layer_norm",
                               "layer_num_field": "num_hidden_layers", "save_gpu_memory": True,
                               "delete_layers_index": [0, 5]}))
    r = depthprune("--model_dir", tiny_opt, "--text_file", wikitext, "--config", cfg, "--nsamples", 4,
                   "--result_json", tmp_path / "r.json", "--quiet")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "r.json").read_text())["deleted_layers"] == [0, 5]


def test_refuses_to_overwrite_the_source_model(tiny_opt):
    r = depthprune("--model_dir", tiny_opt, "--save_dir", tiny_opt, "--overwrite", "--quiet")
    assert r.returncode == 2 and "destroy the original" in r.stderr


def test_unknown_config_key_is_named(tiny_opt, tmp_path):
    cfg = tmp_path / "bad.json"
    cfg.write_text(json.dumps({"delete_layers": 2}))
    r = depthprune("--model_dir", tiny_opt, "--config", cfg, "--quiet")
    assert r.returncode == 2 and "delete_layers" in r.stderr and "valid keys" in r.stderr


def test_missing_model_says_how_to_pass_a_local_folder(tmp_path):
    r = depthprune("--model_dir", tmp_path / "nope", "--quiet")
    assert r.returncode == 2 and "local folder" in r.stderr
