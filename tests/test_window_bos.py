"Every window starts the way the model was trained to start: BOS + seqlen-1 text tokens where the tokenizer adds BOS (issue 19)."
import json

import pytest
import torch

from depthprune_nb.config import ConfigError
from depthprune_nb.data import (adds_bos, get_calib_eval_datasets, get_wikitext_dataset, text_windows,
                                window_bos)
from depthprune_nb.io.hub import load_tokenizer
from depthprune_nb.testing import save_tiny_model
from conftest import depthprune

BOS = 10_000 # a stand-in BOS id outside the positions


class BosPositionTokenizer:
    "Token id = character position, with BOS first unless add_special_tokens=False (as Gemma's tokenizer does)."
    bos_token_id = BOS
    def __call__(self, text, add_special_tokens=True, **kw):
        ids = torch.arange(len(text))
        return type("Enc", (), {"input_ids": (torch.cat([torch.tensor([BOS]), ids]) if add_special_tokens else ids)[None]})()


class PositionTokenizer:
    "Token id = character position, no BOS (as SmolLM2's and Qwen2.5's tokenizers)."
    bos_token_id = None
    def __call__(self, text, **kw): return type("Enc", (), {"input_ids": torch.arange(len(text))[None]})()


def text_positions(ws): return [int(t) for w in ws for t in w[0, 1:]]


@pytest.mark.parametrize("nsamples,eval_nsamples", [(None, None), (3, None), (None, 2), (4, 5), (1, 1)])
def test_one_text_with_bos_gives_disjoint_windows_each_led_by_bos(tmp_path, nsamples, eval_nsamples):
    (tmp_path / "t.txt").write_text("x" * 1000)
    calib, held = get_calib_eval_datasets(None, seqlen=100, text_file=tmp_path / "t.txt", tokenizer=BosPositionTokenizer(),
                                          nsamples=nsamples, eval_nsamples=eval_nsamples)
    assert all(w.shape == (1, 100) and int(w[0, 0]) == BOS for w in calib + held)
    c, h = text_positions(calib), text_positions(held)
    assert c == list(range(99 * len(calib)))              # the text's first tokens, none skipped, none twice
    assert len(set(h)) == len(h) and max(c) < min(h)       # evaluation: later text, no token shared
    assert BOS not in c + h                                # BOS appears once per window, at its start only
    if nsamples: assert len(calib) == nsamples
    if eval_nsamples: assert len(held) == eval_nsamples


def test_bos_false_is_the_references_cut_and_auto_leaves_tokenizers_without_bos_alone(tmp_path):
    (tmp_path / "t.txt").write_text("x" * 1000)
    ref, _ = get_calib_eval_datasets(None, seqlen=100, text_file=tmp_path / "t.txt", tokenizer=BosPositionTokenizer(), bos=False)
    assert int(ref[0][0, 0]) == BOS and ref[1][0].tolist() == list(range(99, 199))   # only the first window has BOS
    for bos in ("auto", False):
        ws, _ = get_calib_eval_datasets(None, seqlen=100, text_file=tmp_path / "t.txt", tokenizer=PositionTokenizer(), bos=bos)
        assert [w[0].tolist() for w in ws] == [list(range(i * 100, (i + 1) * 100)) for i in range(len(ws))]
    with pytest.raises(ConfigError, match="has no BOS token"):
        get_calib_eval_datasets(None, seqlen=100, text_file=tmp_path / "t.txt", tokenizer=PositionTokenizer(), bos=True)
    with pytest.raises(ConfigError, match="bos='on' is invalid"):
        get_wikitext_dataset(None, seqlen=100, text_file=tmp_path / "t.txt", tokenizer=PositionTokenizer(), bos="on")


def test_real_tokenizer_forced_bos(tmp_path, wikitext):
    tok = load_tokenizer(save_tiny_model(tmp_path / "m", family="opt", num_layers=2))
    assert not adds_bos(tok) and window_bos(tok) is None and window_bos(tok, True) == tok.bos_token_id
    plain = get_wikitext_dataset(None, seqlen=64, text_file=wikitext, tokenizer=tok, nsamples=3, progress=False)
    led = get_wikitext_dataset(None, seqlen=64, text_file=wikitext, tokenizer=tok, nsamples=3, progress=False, bos=True)
    assert all(int(w[0, 0]) == tok.bos_token_id for w in led)
    stream = torch.cat([w[0] for w in plain])
    assert torch.equal(torch.cat([w[0, 1:] for w in led]), stream[:3 * 63])   # the same text, 63 tokens a window


def test_heal_cuts_text_by_the_same_rule(tmp_path):
    from depthprune_nb.recover.heal import _training_windows
    model = type("M", (), {"config": type("C", (), {"max_position_embeddings": 64})()})()
    ws = _training_windows("x" * 300, BosPositionTokenizer(), 50, model)
    assert [int(w[0, 0]) for w in ws] == [BOS] * (300 // 49) and text_positions(ws) == list(range(49 * len(ws)))
    assert _training_windows("x" * 300, BosPositionTokenizer(), 50, model, bos=False)[1][0, 0] == 49


def test_cli_window_bos_flag(tmp_path):
    d = save_tiny_model(tmp_path / "opt", family="opt", num_layers=4, init_std=0.2)
    (tmp_path / "t.txt").write_text("The tower is tall and the river runs by it. " * 100)
    common = ("--model_dir", d, "--text_file", tmp_path / "t.txt", "--delete_layer_num", 1, "--seqlen", 32, "--nsamples", 2,
              "--eval_nsamples", 2, "--quiet")
    out = {}
    for flag in ("auto", "on"):
        r = depthprune(*common, "--window_bos", flag, "--result_json", tmp_path / f"{flag}.json")
        assert r.returncode == 0, r.stderr
        out[flag] = json.loads((tmp_path / f"{flag}.json").read_text())
    bos = load_tokenizer(d).bos_token_id
    assert out["auto"]["stats"]["window_bos"] is None                # this tokenizer adds none: the reference's windows
    assert out["on"]["stats"]["window_bos"] == bos
    assert out["auto"]["ppl_by_start"] != out["on"]["ppl_by_start"]
