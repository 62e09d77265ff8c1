"The healing flags of the command line: --heal_objective, --heal_train, --heal_on, --heal_tokens (beside --heal_steps)."
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import depthprune
from test_calib import CHATML
from depthprune_nb.testing import save_tiny_model


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("m") / "tiny-llama", family="llama", num_layers=6)


def test_kd_on_last_layers_from_a_file_within_a_token_budget_saves_an_ordinary_checkpoint(llama, tmp_path, wikitext):
    text = tmp_path / "heal.txt"
    text.write_text(" ".join(f"Line {i} says the value is {i * 7 % 13}." for i in range(400)), encoding="utf-8")
    r = depthprune("--model_dir", llama, "--text_file", wikitext, "--delete_layer_num", 2, "--seqlen", 64, "--nsamples", 4,
                   "--heal_objective", "kd", "--heal_train", "last_k", "--heal_on", text, "--heal_tokens", 200, "--quiet",
                   "--result_json", tmp_path / "r.json", "--save_dir", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    heal = json.loads((tmp_path / "r.json").read_text())["stats"]["heal"]
    assert (heal["objective"], heal["train"], heal["steps"], heal["tokens"]) == ("kd", "last_k", 4, 256), heal
    assert heal["trained_layers"] == [2, 3] and heal["on"] == str(text) and heal["eval_ppl_after"] > 0
    assert "healed 4 steps (256 tokens, kd, last_k)" in r.stdout
    back, loading = AutoModelForCausalLM.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not any(loading[k] for k in ("missing_keys", "unexpected_keys")) and back.config.num_hidden_layers == 4


def test_adjacent_layers_healed_on_the_standard_library(llama, tmp_path, wikitext):
    r = depthprune("--model_dir", llama, "--text_file", wikitext, "--delete_layer_num", 2, "--seqlen", 64, "--nsamples", 4,
                   "--heal_objective", "kd", "--heal_train", "adjacent", "--heal_on", "code", "--heal_steps", 2, "--quiet",
                   "--result_json", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "r.json").read_text())
    cut = min(res["deleted_layers"])
    assert res["stats"]["heal"]["trained_layers"] == [j for j in (cut - 1, cut) if 0 <= j < 4]


def test_kd_on_the_pruned_models_own_chat_answers(llama, tmp_path, wikitext):
    from transformers import AutoTokenizer
    chat = tmp_path / "tiny-chat"
    AutoModelForCausalLM.from_pretrained(llama).save_pretrained(chat)
    tok = AutoTokenizer.from_pretrained(llama)
    tok.chat_template = CHATML
    tok.save_pretrained(chat)
    cache = tmp_path / "cache"
    r = depthprune("--model_dir", chat, "--text_file", wikitext, "--delete_layer_num", 2, "--seqlen", 64, "--nsamples", 4,
                   "--heal_objective", "kd", "--heal_train", "adjacent", "--heal_on", "code_chat_student", "--heal_steps", 2,
                   "--quiet", "--result_json", tmp_path / "r.json", env={"DEPTHPRUNE_CACHE": str(cache)})
    assert r.returncode == 0, r.stderr
    heal = json.loads((tmp_path / "r.json").read_text())["stats"]["heal"]
    assert heal["on"] == "code_chat_student" and heal["steps"] == 2, heal
    made = [json.loads(f.read_text()) for f in (cache / "self").glob("*.json")]  # the answers, made once and cached (the notebook checks they are the student's)
    assert len(made) == 1 and len(made[0]["texts"]) == 64 and "<|im_start|>assistant" in made[0]["prompts"][0]


@pytest.fixture(scope="module")
def llama2(tmp_path_factory):  # seed 2: the search cuts after layer 1 (seed 0's cut at layer 0 leaves no layer for a patch)
    return save_tiny_model(tmp_path_factory.mktemp("m") / "tiny-llama", family="llama", num_layers=6, seed=2)


@pytest.mark.parametrize("repair", [False, True])
def test_a_patch_is_fitted_on_the_unpruned_model_or_kept_where_the_repair_folded_one(llama2, tmp_path, wikitext, repair):
    "--heal_train patch with next-token loss still keeps the unpruned model for the fit; after --repair linear it trains the folded map."
    r = depthprune("--model_dir", llama2, "--text_file", wikitext, "--delete_layer_num", 2, "--seqlen", 64, "--nsamples", 4,
                   "--heal_train", "patch", "--heal_steps", 2, "--quiet", "--result_json", tmp_path / "r.json",
                   *(["--repair", "linear"] if repair else []))
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "r.json").read_text())
    heal, cut = res["stats"]["heal"], min(res["deleted_layers"])
    assert cut > 0 and heal["trained_layers"] == [cut - 1] and heal["trained_modules"] == [f"{cut - 1}.mlp.down_proj"]
    (patch,) = heal["patches"]
    assert patch["fit"].startswith("kept") if repair else patch["fit"] == "linear repair", patch


@pytest.mark.parametrize("flags,msg", [
    (["--heal_train", "last_k"], "--heal_train set, but neither --heal_steps nor --heal_tokens"),
    (["--heal_steps", 2, "--heal_tokens", 100], "give one budget, not both"),
    (["--heal_tokens", 0], "--heal_tokens 0 is invalid"),
    (["--heal_steps", 2, "--heal_on", "missing.txt"], "--heal_on 'missing.txt' is neither a named source (wikitext, code, self, code_chat, code_chat_student)"),
])
def test_healing_flags_that_cannot_work_are_refused_before_the_model_loads(llama, tmp_path, flags, msg):
    r = depthprune("--model_dir", tmp_path / "no-such-model", "--delete_layer_num", 2, "--quiet", *flags)
    assert r.returncode != 0 and msg in r.stderr, r.stderr[-2000:]
