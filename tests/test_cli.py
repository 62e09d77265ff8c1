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


# --- --calib and --repair ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from depthprune_nb.testing import save_tiny_model
    return save_tiny_model(tmp_path_factory.mktemp("models") / "llama", family="llama", num_layers=6, init_std=0.1)


def test_calib_code_repair_linear_saves_what_it_reports(tiny_llama, tmp_path, wikitext):
    "Calibrated on code, layers 2-3 deleted with a linear repair: the saved model is the in-process repair on the same windows."
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from depthprune_nb.calib import calib_eval_windows
    from depthprune_nb.recover.repair import repair_window
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"delete_layers_index": [2, 3]}))
    out = tmp_path / "out"
    r = depthprune("--model_dir", tiny_llama, "--calib", "code", "--text_file", wikitext, "--config", cfg, "--repair", "linear",
                   "--seqlen", 64, "--nsamples", 6, "--eval_nsamples", 3, "--save_dir", out, "--quiet")
    assert r.returncode == 0, r.stderr
    assert "calibration: code (6 windows)" in r.stdout and "repair linear: layers 2–3 into layers[1].mlp.down_proj" in r.stdout, r.stdout
    res = json.loads((out / "prune_result.json").read_text())
    assert res["deleted_layers"] == [2, 3] and res["method"] == "explicit"
    assert res["calibration"]["source"] == "code" and res["calibration"]["windows"] == 6
    rep = res["repair"]
    assert rep["kind"] == "linear" and rep["folds"][0]["fold_layer"] == 1 and 0 <= rep["folds"][0]["unexplained"] < 1
    assert rep["eval_ppl_plain"] == res["eval_ppl"] and rep["eval_ppl_repaired"] != rep["eval_ppl_plain"]

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    cal, held, _ = calib_eval_windows(None, seqlen=64, calib="code", text_file=wikitext, tokenizer=tok, nsamples=6, eval_nsamples=3)
    want = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    repair_window(want, cal, 2, 2)
    back = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad(): torch.testing.assert_close(back(held[0]).logits, want(held[0]).logits, rtol=0, atol=1e-6)
    from depthprune_nb.ppl import perplexity
    assert perplexity(back, held) == pytest.approx(rep["eval_ppl_repaired"], rel=1e-5)


def test_repair_with_a_searching_method(tiny_llama, tmp_path, wikitext):
    "--method block_influence --repair linear: the criterion picks, the repair follows; the record covers every deleted layer."
    r = depthprune("--model_dir", tiny_llama, "--text_file", wikitext, "--method", "block_influence", "--delete_layer_num", 2,
                   "--repair", "linear", "--seqlen", 64, "--nsamples", 4, "--eval_nsamples", 2,
                   "--result_json", tmp_path / "r.json", "--quiet")
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "r.json").read_text())
    rep = res["repair"]
    assert res["method"] == "block_influence" and rep["kind"] == "linear"
    folded = {i for f in rep["folds"] for i in f["deleted"]}
    plain = [i for i in res["deleted_layers"] if i not in folded]  # only a run at layer 0 goes without a repair
    assert folded <= set(res["deleted_layers"]) and plain == list(range(len(plain))) and bool(plain) == bool(rep["notes"]), rep
    assert all(f["fold_layer"] == f["deleted"][0] - 1 for f in rep["folds"]), rep
    assert "eval_ppl_repaired" in rep


def test_repair_refusal_comes_before_the_search_and_writes_nothing(tmp_path, wikitext):
    from depthprune_nb.testing import save_tiny_model
    gemma = save_tiny_model(tmp_path / "gemma2", family="gemma2", num_layers=4)
    r = depthprune("--model_dir", gemma, "--text_file", wikitext, "--delete_layer_num", 2, "--repair", "linear", "--seqlen", 64,
                   "--nsamples", 4, "--save_dir", tmp_path / "out", "--quiet")
    assert r.returncode == 2 and "post_feedforward_layernorm" in r.stderr and "cannot fold" in r.stderr, r.stderr
    assert "<- best" not in r.stdout and not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, msg", [
    (["--calib", "python"], "neither a named source (wikitext, code, chat, code_chat) nor an existing text file"),
    (["--calib", "code", "--calib_text_file", "x.txt"], "both name the calibration text"),
    (["--repair", "lora"], "invalid choice: 'lora'"),
    (["--calib", "chat"], "has none (chat_template is not set)"),
])
def test_calib_and_repair_mistakes(tiny_llama, wikitext, args, msg):
    r = depthprune("--model_dir", tiny_llama, "--text_file", wikitext, "--seqlen", 64, "--nsamples", 2, *args, "--quiet")
    assert r.returncode == 2 and msg in r.stderr, r.stderr
