"""Calibration sources (`depthprune_nb.calib`): `wikitext` (today's windows, unchanged), `code` (the standard library's own
source, fixed and in order), `chat` (the model's own greedy answers through its chat template, cached), any text file; each
apart from the evaluation windows, each window led by BOS under the `window_bos` rule."""
import sys, sysconfig
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import depthprune_nb.calib as calib
from depthprune_nb.calib import (CALIB_SOURCES, CHAT_PROMPTS, CODE_MODULES, calib_eval_windows, calib_source, calibration_text,
                                 chat_text, code_text)
from depthprune_nb.config import ConfigError
from depthprune_nb.data import get_calib_eval_datasets, text_windows, window_bos

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread): pass

@pytest.fixture(scope="module")
def tiny(family_checkpoint):
    "A tiny Llama and its tokenizer, the tokenizer given a ChatML template."
    path = family_checkpoint("llama", 2)
    tok = AutoTokenizer.from_pretrained(path)
    tok.chat_template = CHATML
    return AutoModelForCausalLM.from_pretrained(path).eval(), tok

@pytest.fixture(scope="module")
def text(tmp_path_factory)->Path:
    p = tmp_path_factory.mktemp("text") / "wiki.txt"
    p.write_text(" ".join(f"The tower number {i} is {3 * i + 24} metres tall." for i in range(600)))
    return p

def same(a:list, b:list)->bool: return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))
def overlap(a:list, b:list)->bool: return any(torch.equal(x, y) for x in a for y in b)


def test_code_is_the_standard_library_in_a_fixed_order():
    t = code_text()
    root = Path(sysconfig.get_paths()["stdlib"])
    heads = [line[len("# file: "):] for line in t.splitlines() if line.startswith("# file: ")]
    assert heads[:len(CODE_MODULES)] == list(CODE_MODULES), "the modules are not in CODE_MODULES' order"
    argparse_src = (root / "argparse.py").read_text(encoding="utf-8")
    assert argparse_src in t and t.startswith("# file: argparse.py\n" + argparse_src[:100])
    assert t == calibration_text("code"), "code text is not deterministic"
    with pytest.raises(FileNotFoundError, match="nope.py"): code_text(("argparse.py", "nope.py"))


@pytest.mark.parametrize("bos", ["auto", True])
def test_code_windows_follow_the_bos_rule_and_stay_apart_from_evaluation(tiny, text, bos):
    _, tok = tiny
    cal, held, rec = calib_eval_windows(None, seqlen=64, calib="code", text_file=text, tokenizer=tok, nsamples=6,
                                        eval_nsamples=3, bos=bos)
    assert (len(cal), len(held)) == (6, 3) and rec["source"] == "code" and rec["python"] == sys.version.split()[0]
    lead = window_bos(tok, bos)
    assert rec["bos"] == lead
    if lead is not None: assert all(int(w[0, 0]) == lead for w in cal + held), "a window does not start with BOS"
    body = tok.decode(cal[0][0, 1 if lead is not None else 0:])
    assert "argparse" in body, body[:200]
    want_held = text_windows(tok, text.read_text(), 64, bos, progress=False)[:3]
    assert same(held, want_held), "the evaluation windows are not the evaluation text's own"
    assert not overlap(cal, held)


def test_wikitext_and_a_file_give_todays_windows(tiny, text):
    _, tok = tiny
    today = get_calib_eval_datasets(None, seqlen=64, text_file=text, tokenizer=tok, nsamples=5, eval_nsamples=2)
    cal, held, rec = calib_eval_windows(None, seqlen=64, calib="wikitext", text_file=text, tokenizer=tok, nsamples=5, eval_nsamples=2)
    assert same(cal, today[0]) and same(held, today[1]) and rec["source"] == "wikitext" and rec["path"] == str(text)
    # --calib FILE is --calib_text_file FILE: the same file as the evaluation text is split into its two ends
    cal_f, held_f, rec_f = calib_eval_windows(None, seqlen=64, calib=str(text), text_file=text, tokenizer=tok, nsamples=5,
                                              eval_nsamples=2)
    assert same(cal_f, today[0]) and same(held_f, today[1]) and rec_f["source"] == "file"
    # no evaluation: the reference's single dataset
    cal0, held0, _ = calib_eval_windows(None, seqlen=64, calib="wikitext", text_file=text, tokenizer=tok, nsamples=5, eval_nsamples=0)
    assert held0 is None and len(cal0) == 5 and same(cal0, today[0])


def test_bad_sources_are_named():
    with pytest.raises(ConfigError, match=r"calib='python' is neither a named source \(wikitext, code, chat, code_chat\)"): calib_source("python")
    with pytest.raises(ConfigError, match="is invalid"): calib_source(3)
    assert [calib_source(s) for s in CALIB_SOURCES] == [(s, None) for s in CALIB_SOURCES]


def test_chat_is_the_models_greedy_answers_through_its_template_and_cached(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    prompts = CHAT_PROMPTS[:3]
    info = {}
    t = chat_text(model, tok, prompts, max_new_tokens=6, cache_dir=tmp_path, info=info)
    assert info["cached"] is False and Path(info["cache"]).is_file()
    for p in prompts:
        asked = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
        ids = tok(asked, return_tensors="pt", add_special_tokens=False).input_ids
        gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                             pad_token_id=tok.pad_token_id or tok.eos_token_id)
        answer = tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True).strip()
        turn = tok.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": answer}], tokenize=False)
        assert turn in t, f"the exchange for {p!r} is not the model's greedy answer through the template"
    # a second run reads the cache: generating again would fail here
    monkeypatch.setattr(calib, "chat_answers", lambda *a, **k: pytest.fail("answers regenerated despite the cache"))
    again = {}
    assert chat_text(model, tok, prompts, max_new_tokens=6, cache_dir=tmp_path, info=again) == t and again["cached"] is True
    # another model (one weight changed) is another cache entry
    other = AutoModelForCausalLM.from_pretrained(model.name_or_path).eval()
    with torch.no_grad(): other.lm_head.weight[0, 0] += 1.0
    with pytest.raises(pytest.fail.Exception, match="regenerated"): chat_text(other, tok, prompts, max_new_tokens=6, cache_dir=tmp_path)


def test_chat_windows_and_refusal(tiny, text, tmp_path, family_checkpoint):
    model, tok = tiny
    cal, held, rec = calib_eval_windows(None, seqlen=32, calib="chat", text_file=text, tokenizer=tok, model=model, nsamples=2,
                                        eval_nsamples=1, chat=dict(prompts=CHAT_PROMPTS[:4], max_new_tokens=8, cache_dir=tmp_path))
    assert rec["source"] == "chat" and rec["prompts"] == 4 and len(cal) == 2 and len(held) == 1
    assert "<|im_start|>user" in tok.decode(cal[0][0]), tok.decode(cal[0][0])
    plain = AutoTokenizer.from_pretrained(family_checkpoint("llama", 2))  # no chat template
    assert not plain.chat_template
    with pytest.raises(ConfigError, match="has none .chat_template is not set.: use calib='code', 'wikitext' or a text file"):
        calib_eval_windows(None, seqlen=32, calib="chat", text_file=text, tokenizer=plain, model=model)
