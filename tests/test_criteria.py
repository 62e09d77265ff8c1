"Every layer-selection criterion against a hand-made expectation, and calibration kept apart from evaluation."
import json, subprocess, sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from depthprune_nb.config import ConfigError, LayerImportancePruneConfig
from depthprune_nb.data import cut_windows, get_calib_eval_datasets, split_windows
from depthprune_nb.pruner import ModelPruner, layer_importance, save_pruned
from depthprune_nb.ppl import perplexity
from depthprune_nb.result import PruneResult
from depthprune_nb.surgery import temporarily_deleted
from depthprune_nb.testing import save_tiny_model
from conftest import depthprune

METHODS = ("ppl_window", "angular", "angular_all", "block_influence", "sleb")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("m") / "llama", family="llama", num_layers=6, init_std=0.2)


@pytest.fixture(scope="module")
def opt_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("m") / "opt", family="opt", num_layers=6, init_std=0.2)


def load(d): return AutoModelForCausalLM.from_pretrained(d).eval()


def windows(k=4, T=32, seed=0):
    return [torch.randint(0, 200, (1, T), generator=torch.Generator().manual_seed(seed + i)) for i in range(k)]


def plant_identity(model, layers):
    "Zero every output projection of `layers` (weights and biases): each layer then adds exactly nothing to the residual stream."
    with torch.no_grad():
        for i in layers:
            layer = model.model.layers[i] if hasattr(model.model, "layers") else model.model.decoder.layers[i]
            outs = [layer.self_attn.o_proj, layer.mlp.down_proj] if hasattr(layer, "mlp") else [layer.self_attn.out_proj, layer.fc2]
            for lin in outs:
                lin.weight.zero_()
                if lin.bias is not None: lin.bias.zero_()
    return model


# --- criteria with a known answer ---------------------------------------------------------------

@pytest.mark.parametrize("family", ["llama", "opt"])
def test_block_influence_picks_planted_identities_wherever_they_are(family, llama_dir, opt_dir):
    model = plant_identity(load(llama_dir if family == "llama" else opt_dir), [1, 4])
    res = layer_importance(model, windows(), 2, method="block_influence", progress=False)
    assert res.deleted_layers == [1, 4], res.scores
    assert res.scores[1] < 1e-5 and res.scores[4] < 1e-5
    assert min(v for i, v in res.scores.items() if i not in (1, 4)) > 1e-3, res.scores
    assert abs(res.best_ppl / res.baseline_ppl - 1) < 1e-4, "deleting identity layers must not change the PPL"


@pytest.mark.parametrize("method", ["angular", "angular_all"])
@pytest.mark.parametrize("family", ["llama", "opt"])
def test_angular_picks_the_planted_identity_block(method, family, llama_dir, opt_dir):
    model = plant_identity(load(llama_dir if family == "llama" else opt_dir), [2, 3])
    res = layer_importance(model, windows(), 2, method=method, progress=False)
    assert res.deleted_layers == [2, 3], res.proxy_by_start
    assert res.proxy_by_start[2] < 1e-3 and min(v for s, v in res.proxy_by_start.items() if s != 2) > 0.05
    assert res.stats["layer_passes"] == 6 * 4 and res.stats["forward_passes"] == 4  # one forward per window


def test_angular_last_token_uses_only_the_last_position(llama_dir):
    "Planting an identity that only the last position sees is impossible, so check the definition directly."
    from depthprune_nb.parts import captured_stream, locate
    from depthprune_nb.parts import angular_distance as _angular
    model, data = load(llama_dir), windows(2)
    res = layer_importance(model, data, 2, method="angular", progress=False)
    parts, want = locate(model), {s: 0.0 for s in range(5)}
    for ids in data:
        with captured_stream(parts) as st: model(ids, use_cache=False)
        for s in want: want[s] += _angular(st[s][0, -1], st[s + 2][0, -1]) / len(data)
    for s in want: assert abs(res.proxy_by_start[s] - want[s]) < 1e-6


def plain_greedy(model, data, n):
    "SLEB as written in the paper, with nothing reused: n rounds of try-every-remaining-layer."
    removed, ppls = [], []
    for _ in range(n):
        table = {}
        for c in range(model.config.num_hidden_layers):
            if c in removed: continue
            with temporarily_deleted(model, sorted(removed + [c])): table[c] = perplexity(model, data)
        best = min(sorted(table), key=table.get)
        removed.append(best); ppls.append(table[best])
    return removed, ppls


@pytest.mark.parametrize("engine,early_abort", [("fast", False), ("fast", True), ("reference", False)])
def test_sleb_equals_the_plain_greedy_loop(engine, early_abort, llama_dir):
    model, data = load(llama_dir), windows(4)
    order, ppls = plain_greedy(model, data, 3)
    res = layer_importance(model, data, 3, method="sleb", engine=engine, early_abort=early_abort, progress=False)
    assert res.stats["removal_order"] == order
    assert all(abs(a / b - 1) < 1e-5 for a, b in zip(res.stats["round_ppl"], ppls)), (res.stats["round_ppl"], ppls)
    assert res.deleted_layers == sorted(order) and abs(res.best_ppl / ppls[-1] - 1) < 1e-5
    if engine == "fast" and not early_abort:
        assert res.stats["layer_passes"] < res.stats["brute_force_layer_passes"]


def test_sleb_with_one_layer_is_the_window_search(llama_dir):
    model, data = load(llama_dir), windows(3)
    a = layer_importance(model, data, 1, method="sleb", progress=False)
    b = layer_importance(model, data, 1, method="ppl_window", progress=False)
    assert a.deleted_layers == b.deleted_layers and abs(a.best_ppl - b.best_ppl) < 1e-6 * b.best_ppl


# --- one API, one result type ---------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_every_method_returns_a_full_result_that_round_trips(method, llama_dir):
    model, data = load(llama_dir), windows(6)
    calib, held = split_windows(data)
    res = layer_importance(model, calib, 2, method=method, eval_data=held, progress=False)
    assert res.method == method and len(res.deleted_layers) == 2 and res.num_layers_after == 4
    for k in ("layer_passes", "head_passes", "wall_s"): assert k in res.stats, (k, res.stats)
    assert res.runner_up_layers is not None and res.runner_up_layers != res.deleted_layers
    with temporarily_deleted(model, res.deleted_layers): assert abs(perplexity(model, held) / res.eval_ppl - 1) < 1e-6
    with temporarily_deleted(model, res.deleted_layers): assert abs(perplexity(model, calib) / res.best_ppl - 1) < 1e-5
    with temporarily_deleted(model, res.runner_up_layers): assert abs(perplexity(model, held) / res.eval_runner_up_ppl - 1) < 1e-6
    assert abs(perplexity(model, held) / res.eval_baseline_ppl - 1) < 1e-6
    assert res.eval_gap == pytest.approx(res.eval_runner_up_ppl / res.eval_ppl - 1)
    assert PruneResult.from_json(res.to_json()) == res
    text = str(res)
    assert "evaluation windows" in text and "runner-up" in text


def test_one_dataset_behaves_as_before(llama_dir):
    "The reference's call: no evaluation data, the same choice, the evaluation fields None."
    model, data = load(llama_dir), windows(4)
    res = ModelPruner(LayerImportancePruneConfig(delete_layer_num=2), progress=False).search(model, data)
    from depthprune_nb import fast_search
    assert res.deleted_layers == fast_search(model, data, 2, progress=False).deleted_layers
    assert (res.eval_baseline_ppl, res.eval_ppl, res.eval_runner_up_ppl, res.eval_gap) == (None, None, None, None)
    assert res.method == "ppl_window" and "evaluation windows" not in str(res)
    assert PruneResult.from_json(res.to_json()) == res


def test_config_method_is_validated_and_used(llama_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"valid methods: \['ppl_window', 'angular', 'angular_all', 'block_influence', 'sleb', 'kl'\]"):
        LayerImportancePruneConfig(method="shortgpt")
    with pytest.raises(ConfigError, match="valid methods"):
        layer_importance(load(llama_dir), windows(2), 1, method="bi")
    cfg = LayerImportancePruneConfig(delete_layer_num=2, method="block_influence")
    assert LayerImportancePruneConfig.from_json(cfg.to_json(tmp_path / "c.json") and tmp_path / "c.json") == cfg


def test_non_consecutive_pick_prunes_saves_and_reloads(llama_dir, tmp_path):
    "Every consumer of deleted_layers: surgery, the table, the plots, save and reload."
    model, data = plant_identity(load(llama_dir), [1, 4]), windows(4)
    calib, held = data[:2], data[2:]
    pruner = ModelPruner(LayerImportancePruneConfig(delete_layer_num=2, method="block_influence"), progress=False)
    before = perplexity(model, held)
    model = pruner.pruning_model(model, calib, eval_data=held)
    res = pruner.result
    assert res.deleted_layers == [1, 4] and model.config.num_hidden_layers == 4
    assert abs(perplexity(model, held) / before - 1) < 1e-4 and abs(res.eval_ppl / before - 1) < 1e-4
    str(res)
    import matplotlib; matplotlib.use("Agg")
    from depthprune_nb.plots import plot_heatmap
    res.plot(); plot_heatmap({2: res})
    out = save_pruned(model, tmp_path / "p", result=res)
    back, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert abs(perplexity(back.eval(), held) / perplexity(model, held) - 1) < 1e-6
    assert PruneResult.from_json(out / "prune_result.json") == res


# --- calibration windows never meet evaluation windows -------------------------------------------

class PositionTokenizer:
    "Token id = character position: each window shows exactly which part of the text it holds."
    def __call__(self, text, **kw): return type("Enc", (), {"input_ids": torch.arange(len(text))[None]})()


def positions(ws): return {int(t) for w in ws for t in w[0]}


@pytest.mark.parametrize("nsamples,eval_nsamples", [(None, None), (3, None), (None, 2), (4, 5), (1, 1)])
def test_one_text_gives_disjoint_windows(tmp_path, nsamples, eval_nsamples):
    (tmp_path / "t.txt").write_text("x" * 1000)
    calib, held = get_calib_eval_datasets(None, seqlen=100, text_file=tmp_path / "t.txt", tokenizer=PositionTokenizer(),
                                          nsamples=nsamples, eval_nsamples=eval_nsamples)
    assert calib and held and not positions(calib) & positions(held)
    assert max(positions(calib)) < min(positions(held))
    assert positions(calib) == set(range(100 * len(calib)))   # the same calibration windows as before: the text's first
    if nsamples: assert len(calib) == nsamples
    if eval_nsamples: assert len(held) == eval_nsamples


def test_windows_that_cannot_be_disjoint_are_refused():
    with pytest.raises(ConfigError, match="cannot give 6 calibration and 5 evaluation"):
        split_windows(cut_windows(torch.arange(1000), 100, progress=False), 6, 5)


def test_hub_route_uses_two_splits(monkeypatch):
    import datasets
    asked = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name, cfg, split: asked.append(split) or {"text": [split * 30]})
    calib, held = get_calib_eval_datasets(None, seqlen=16, tokenizer=PositionTokenizer(), nsamples=2)
    assert asked == ["train", "test"] and len(calib) == 2 and len(held) == len("test" * 30) // 16


def test_real_text_split_shares_no_window(tmp_path, wikitext):
    from depthprune_nb.io.hub import load_tokenizer
    tok = load_tokenizer(save_tiny_model(tmp_path / "m", family="opt", num_layers=2))
    calib, held = get_calib_eval_datasets(None, seqlen=256, text_file=wikitext, tokenizer=tok, nsamples=16)
    assert len(calib) == 16 and len(held) == 16
    assert not {tuple(w[0].tolist()) for w in calib} & {tuple(w[0].tolist()) for w in held}


# --- the command line ------------------------------------------------------------------------------


def test_cli_defaults_to_the_honest_split_and_eval_0_is_the_reference(opt_dir, tmp_path, wikitext):
    common = ("--model_dir", opt_dir, "--text_file", wikitext, "--delete_layer_num", 2, "--seqlen", 64, "--nsamples", 4, "--quiet")
    r = depthprune(*common, "--result_json", tmp_path / "a.json")
    assert r.returncode == 0, r.stderr
    assert "evaluation windows (not used to choose)" in r.stdout
    a = json.loads((tmp_path / "a.json").read_text())
    assert a["eval_ppl"] is not None and a["eval_baseline_ppl"] is not None and a["eval_runner_up_ppl"] is not None
    assert a["stats"]["eval_windows"] == 4
    r = depthprune(*common, "--eval_nsamples", 0, "--result_json", tmp_path / "b.json")
    assert r.returncode == 0, r.stderr
    b = json.loads((tmp_path / "b.json").read_text())
    assert b["eval_ppl"] is None and "evaluation windows" not in r.stdout
    assert b["deleted_layers"] == a["deleted_layers"] and b["ppl_by_start"] == a["ppl_by_start"]


def test_cli_method_and_two_text_files(opt_dir, tmp_path):
    (tmp_path / "c.txt").write_text("The tower is tall. " * 400); (tmp_path / "e.txt").write_text("A river runs by. " * 400)
    r = depthprune("--model_dir", opt_dir, "--calib_text_file", tmp_path / "c.txt", "--eval_text_file", tmp_path / "e.txt",
                   "--delete_layer_num", 2, "--seqlen", 64, "--nsamples", 3, "--eval_nsamples", 2, "--method", "block_influence",
                   "--quiet", "--result_json", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["method"] == "block_influence" and res["stats"]["eval_windows"] == 2 and len(res["deleted_layers"]) == 2
    r = depthprune("--model_dir", opt_dir, "--method", "bi", "--quiet")
    assert r.returncode == 2 and "invalid choice" in r.stderr


# --- healing ---------------------------------------------------------------------------------------

needs_peft = pytest.mark.skipif(__import__("importlib").util.find_spec("peft") is None, reason="peft is not installed (pip install peft)")


def test_heal_without_peft_says_how_to_get_it(monkeypatch, llama_dir):
    from depthprune_nb.recover.heal import heal
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft now raises ImportError
    with pytest.raises(ImportError, match="pip install peft"): heal(load(llama_dir), windows(2), steps=1)


@needs_peft
def test_heal_trains_on_calibration_windows_and_is_judged_on_others(llama_dir, tmp_path):
    from depthprune_nb.recover.heal import heal
    from depthprune_nb.surgery import delete_layers
    stream = torch.randint(0, 200, (1, 32 * 10), generator=torch.Generator().manual_seed(1))
    calib, held = split_windows(cut_windows(stream, 32, progress=False), nsamples=6)
    start = lambda w: (w.data_ptr() - stream.data_ptr()) // stream.element_size()
    assert max(start(w) for w in calib) + 32 <= min(start(w) for w in held), "training and evaluation windows overlap"
    model = delete_layers(load(llama_dir), [2, 3])
    seen = []
    hook = model.get_input_embeddings().register_forward_hook(lambda m, a, o: seen.append(a[0].clone()))
    model, info = heal(model, calib, steps=12, lr=1e-2, progress=False)
    hook.remove()
    assert len(seen) == 12 and all(any(torch.equal(s, c) for c in calib) for s in seen)   # only calibration windows
    assert not any(any(torch.equal(s, h) for h in held) for s in seen)
    assert info["last_loss"] < info["first_loss"]
    assert not any("lora" in n for n, _ in model.named_parameters()) and not model.training
    after = perplexity(model, held)
    model.save_pretrained(tmp_path / "h")
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "h").eval()
    assert abs(perplexity(back, held) / after - 1) < 1e-5 and back.config.depthprune_healed["steps"] == 12


def heal_text(k=12):
    "Some varied text for the tiny models' tokenizer: a few hundred tokens."
    return " ".join(f"The tower number {i} is {3 * i + 24} metres tall and stands by the river." for i in range(k))


@needs_peft
def test_heal_on_text_is_the_fine_tune_on_its_windows(llama_dir, tmp_path):
    "Text, as a str or a file, is tokenized and cut by cut_windows: the same windows give the same losses and weights."
    from depthprune_nb.io.hub import load_tokenizer
    from depthprune_nb.recover.heal import heal
    from depthprune_nb.surgery import delete_layers
    tok, text = load_tokenizer(llama_dir), heal_text()
    ws = cut_windows(tok(text, return_tensors="pt").input_ids, 32, progress=False)
    assert len(ws) >= 3
    (tmp_path / "calib.txt").write_text(text, encoding="utf-8")
    runs = {name: heal(delete_layers(load(llama_dir), [2, 3]), data, steps=len(ws) + 1, lr=1e-2, progress=False, **kw)
            for name, data, kw in [("windows", ws, {}), ("text", text, dict(tokenizer=tok, seqlen=32)),
                                   ("file", tmp_path / "calib.txt", dict(tokenizer=tok, seqlen=32))]}
    want_model, want = runs.pop("windows")
    for name, (model, info) in runs.items():
        assert (info["windows"], info["seqlen"]) == (len(ws), 32), name
        assert info["losses"] == want["losses"], (name, info["losses"], want["losses"])
        for (k, a), b in zip(model.state_dict().items(), want_model.state_dict().values()): assert torch.equal(a, b), (name, k)


@needs_peft
def test_heal_refuses_text_it_cannot_cut_and_leaves_the_model_alone(llama_dir, tmp_path):
    from depthprune_nb.io.hub import load_tokenizer
    from depthprune_nb.recover.heal import heal
    tok, model = load_tokenizer(llama_dir), load(llama_dir)
    with pytest.raises(ConfigError, match=r"data is text \([\d,]+ characters\) but tokenizer=None: pass tokenizer="):
        heal(model, heal_text(), steps=1)
    n = len(tok("too short").input_ids)
    with pytest.raises(ConfigError, match=f"only {n} tokens, fewer than one window of seqlen=32: pass more text or a smaller seqlen"):
        heal(model, "too short", tokenizer=tok, seqlen=32, steps=1)
    (tmp_path / "calib.txt").write_text(heal_text(), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"is a str, which heal trains on as text, but it names an existing file: pass Path\("):
        heal(model, str(tmp_path / "calib.txt"), tokenizer=tok, seqlen=32, steps=1)
    with pytest.raises(FileNotFoundError, match="missing.txt"): heal(model, tmp_path / "missing.txt", tokenizer=tok, steps=1)
    with pytest.raises(ConfigError, match=r"seqlen=64 does not match the windows given \(32 tokens each\)"):
        heal(model, windows(2), seqlen=64, steps=1)
    assert not hasattr(model.config, "depthprune_healed") and not any("lora" in k for k, _ in model.named_parameters())


@needs_peft
def test_cli_heal_steps(opt_dir, tmp_path, wikitext):
    r = depthprune("--model_dir", opt_dir, "--text_file", wikitext, "--delete_layer_num", 2, "--seqlen", 64, "--nsamples", 4,
                   "--heal_steps", 3, "--quiet", "--result_json", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    assert "healed 3 steps" in r.stdout
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["stats"]["heal"]["steps"] == 3 and res["stats"]["heal"]["eval_ppl_after"] > 0


def test_a_pruned_model_stays_in_eval_mode_and_can_be_searched_again(llama_dir):
    "Surgery builds a new layer list; it must keep the model's mode, or the next search refuses a 'training' model."
    from depthprune_nb.surgery import delete_layers
    model = delete_layers(load(llama_dir), [1])
    assert not any(m.training for m in model.modules())
    assert len(layer_importance(model, windows(2), 1, progress=False).deleted_layers) == 1


def test_cli_writes_a_healed_gguf_that_reloads_as_the_saved_healed_model(tmp_path):
    "After healing the kept blocks are not the source's bytes: the GGUF holds the trained tensors in F32, not the source's copies."
    from transformers import AutoModelForCausalLM
    from depthprune_nb.io.gguf import read_gguf, load_gguf_model, resolve_gguf
    from depthprune_nb.testing import save_tiny_gguf
    src = save_tiny_gguf(tmp_path / "tiny.gguf")
    text = tmp_path / "text.txt"
    text.write_text(" ".join(f"The tower number {i} is {3 * i + 24} metres tall, built in {1800 + 7 * i}." for i in range(200)))
    r = depthprune("--model_dir", src, "--save_gguf", tmp_path / "out.gguf", "--save_dir", tmp_path / "out",
                   "--heal_steps", 2, "--heal_train", "last_k", "--seqlen", 32, "--nsamples", 4, "--quiet", "--text_file", text)
    assert r.returncode == 0, r.stderr
    assert "the tensors healing trained in F32" in r.stdout, r.stdout
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    back, _ = load_gguf_model(*resolve_gguf(tmp_path / "out.gguf"))
    ids = torch.randint(0, saved.config.vocab_size, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(): torch.testing.assert_close(back(ids).logits, saved(ids).logits)
    healed = read_gguf(tmp_path / "out.gguf").get_field("depthprune.healed_tensors").contents()
    assert healed and all(n.startswith("blk.") for n in healed), healed
