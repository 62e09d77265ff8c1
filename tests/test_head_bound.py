"""The head bound (`fast_search(head_bound=True)`): the bound is never above the true NLL (random tiny models of several
families, vocabulary sizes and subset sizes); the pick, the runner-up and the PPL of every window at or below the
runner-up equal the full table's, with kept final states and without, in chunks, in bfloat16 with float32
confirmation, and after a resumed checkpoint; what it cannot do is refused clearly."""
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from depthprune_nb.engine.checkpoint import SearchCheckpoint
from depthprune_nb.config import ConfigError, EngineOptions
from depthprune_nb.engine.exact import fast_search
from depthprune_nb.engine.head_bound import _Bounds
from depthprune_nb.parts import locate
from depthprune_nb.result import fill_runner_up
from depthprune_nb.engine.sweeps import Engine
from depthprune_nb.testing import save_tiny_model, tiny_config


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models run on one thread


def random_model(family:str, vocab:int, layers:int=5, seed:int=0):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, layers, vocab_size=vocab)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2: p.normal_(0, 0.3)
    return model


def windows(model, N:int=4, T:int=24, seed:int=0)->list:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, model.config.vocab_size, (1, T), generator=g) for _ in range(N)]


@pytest.mark.parametrize("family,vocab,top_k", [("llama", 37, 1), ("llama", 3001, 4), ("gemma2", 512, 32),
                                                ("opt", 700, 2), ("qwen2", 1500, 8), ("gpt2", 97, 16)])
def test_bound_never_above_the_true_nll(family, vocab, top_k):
    "Per sample and window, the rows-only bound <= the full head's NLL (float32 rounding aside); the unpruned NLLs are the full table's."
    model = random_model(family, vocab, seed=vocab)
    data = windows(model, seed=vocab)
    eng = Engine(model, data, 2, options=EngineOptions(progress=False)); eng.learn_outputs()
    b = _Bounds(eng, top_k)
    idx = list(range(len(data)))
    bounds, base_b = eng.sweep(idx, eng.starts, baseline=True, heads=b.heads(0))
    full, base_f = eng.sweep(idx, eng.starts, baseline=True)
    for s in eng.starts:
        for x, y in zip(bounds[s], full[s]): assert x <= y + 1e-5, (family, vocab, s, x, y)
    for x, y in zip(base_b, base_f): assert abs(x - y) <= 1e-5 * abs(y), (x, y)
    assert b.check is not None and b.check < 1e-3, b.check  # the rows-only logits agree with the full head's
    assert b.counts["bound_rows"] / b.counts["bound_passes"] <= vocab


def planted_near_ties(seed:int=0):
    "A 6-layer Llama whose layers 1-4 are nearly the identity (scaled by 1e-3 * i): windows inside them nearly tie."
    model = AutoModelForCausalLM.from_pretrained(save_tiny_model(family="llama", num_layers=6, init_std=0.3, seed=seed)).eval()
    with torch.no_grad():
        for i, layer in enumerate(locate(model).layers[1:5], start=1):
            layer.self_attn.o_proj.weight.mul_(1e-3 * i); layer.mlp.down_proj.weight.mul_(1e-3 * i)
    return model


def check_same_answer(r, full, n):
    "The pick, the runner-up and every window at or below the runner-up exact and equal to the full table's; the rest bounds."
    r, full = fill_runner_up(r), fill_runner_up(full)
    assert (r.deleted_layers, r.runner_up_layers) == (full.deleted_layers, full.runner_up_layers), n
    assert abs(r.best_ppl / full.best_ppl - 1) <= 1e-6 and abs(r.baseline_ppl / full.baseline_ppl - 1) <= 1e-6
    for s, v in full.ppl_by_start.items():
        if v <= full.runner_up_ppl: assert s not in r.lower_bound_starts, (n, s)
        if s in r.lower_bound_starts: assert r.ppl_by_start[s] <= v * (1 + 1e-6), (n, s, r.ppl_by_start[s], v)
        else: assert abs(r.ppl_by_start[s] / v - 1) <= 1e-5, (n, s, r.ppl_by_start[s], v)
    assert set(r.lower_bound_starts) | set(r.stats["head_bound"]["exact_starts"]) == set(full.ppl_by_start)


@pytest.mark.parametrize("seed", [0, 1])
def test_planted_near_ties_every_n(seed):
    model = planted_near_ties(seed)
    data = windows(model, N=5, T=32, seed=seed)
    for n in range(1, 6):
        full = fast_search(model, data, n, progress=False)
        r = fast_search(model, data, n, head_bound=True, progress=False)
        check_same_answer(r, full, n)


def test_exact_ties_pick_the_earliest():
    "Layers 1-4 exactly the identity: windows 1, 2 and 3 (n=2) tie exactly; they are scored in full and the earliest is picked."
    model = planted_near_ties()
    with torch.no_grad():
        for layer in locate(model).layers[1:5]: layer.self_attn.o_proj.weight.zero_(); layer.mlp.down_proj.weight.zero_()
    data = windows(model, N=3, T=32)
    full, r = fast_search(model, data, 2, progress=False), fast_search(model, data, 2, head_bound=True, progress=False)
    assert full.ppl_by_start[1] == full.ppl_by_start[2] == full.ppl_by_start[3]
    assert full.deleted_layers == r.deleted_layers == [1, 2] and not {1, 2, 3} & set(r.lower_bound_starts)
    check_same_answer(r, full, 2)


def test_without_kept_states_in_chunks_and_in_bfloat16():
    "Nothing kept (a tiny memory budget): the contenders are swept again, the same answer; chunks of 2; bfloat16 confirmed in float32."
    model, n = planted_near_ties(), 2
    data = windows(model, N=5, T=32)
    full = fast_search(model, data, n, progress=False)
    tight = fast_search(model, data, n, head_bound=True, memory_budget=30_000, progress=False)
    assert tight.stats["head_bound"]["states_kept_bytes"] == 0
    check_same_answer(tight, full, n)
    check_same_answer(fast_search(model, data, n, head_bound=True, chunk_size=2, progress=False), full, n)
    low = fast_search(model, data, n, head_bound=True, compute_dtype="bfloat16", progress=False)
    assert low.deleted_layers == full.deleted_layers and abs(low.best_ppl / full.best_ppl - 1) <= 1e-5
    assert low.stats["engine"].startswith("fast_head_bound_bfloat16")
    V, conf = model.config.vocab_size, low.stats["confirm"]  # head rows: the bfloat16 pass's plus the confirmation's full heads
    assert conf["head_passes"] > 0 and low.stats["head_rows"] == low.stats["low_precision_head_rows"] + conf["head_passes"] * V


def test_checkpoint_resumes_to_the_same_answer(tmp_path):
    model = planted_near_ties()
    data = windows(model, N=4, T=32)
    a = fast_search(model, data, 2, head_bound=True, chunk_size=1, progress=False, checkpoint=SearchCheckpoint(tmp_path))
    ck = SearchCheckpoint(tmp_path, resume=True)
    b = fast_search(model, data, 2, head_bound=True, chunk_size=1, progress=False, checkpoint=ck)
    assert a.ppl_by_start == b.ppl_by_start and a.deleted_layers == b.deleted_layers and a.lower_bound_starts == b.lower_bound_starts
    with pytest.raises(ConfigError, match="another search|differ"):  # a head-bound checkpoint is not a full table's
        fast_search(model, data, 2, chunk_size=1, progress=False, checkpoint=SearchCheckpoint(tmp_path, resume=True))


def test_refusals():
    model = planted_near_ties()
    data = windows(model, N=2, T=16)
    with pytest.raises(ConfigError, match="early_abort=True and head_bound=True"):
        fast_search(model, data, 2, head_bound=True, early_abort=True, progress=False)
    from depthprune_nb.engine.approx import approx_search
    from depthprune_nb.pruner import layer_importance
    with pytest.raises(ConfigError, match="applies to the exact search"):  # not silently ignored
        approx_search(model, data, 2, head_bound=True, progress=False)
    for kw in (dict(engine="reference"), dict(engine="approx"), dict(method="angular")):  # one rule, named values
        with pytest.raises(ConfigError, match="applies to the exact search.*" + repr(kw.get("engine", "fast"))):
            layer_importance(model, data, 2, head_bound=True, progress=False, **kw)
    model.lm_head = torch.nn.Sequential(model.lm_head).eval()  # not an nn.Linear: its rows are not the vocabulary's
    model.get_output_embeddings = lambda: model.lm_head
    with pytest.raises(ConfigError, match="head_bound=False"):
        fast_search(model, data, 2, head_bound=True, progress=False)


def test_plan_counts_head_rows(tmp_path):
    "The plan counts head rows: the brute force's and the plain exact table's all V rows per head pass, head_bound's far fewer."
    from depthprune_nb.engine.plan import plan_search
    folder = save_tiny_model(tmp_path / "m", family="llama", num_layers=6)
    V = AutoModelForCausalLM.from_pretrained(folder).config.vocab_size
    full, hb = plan_search(folder, 2, 8, 16), plan_search(folder, 2, 8, 16, head_bound=True)
    assert full.head_rows == full.brute_force_head_rows == 8 * 6 * V and not full.head_bound
    assert hb.head_bound and hb.head_passes == 8 * 3 and hb.head_rows < full.head_rows and hb.flops < full.flops
    assert "head rows" in str(hb) and "head_bound: at best" in str(hb)
    assert "not counted" in str(plan_search(folder, 2, 8, 16, engine="approx", head_bound=True))


def test_plan_suggests_head_bound_where_the_head_dominates():
    "A plan without head_bound names the head's share of the work and the flag when the head is at least a third of it."
    from depthprune_nb.engine.plan import plan_search
    cfg = dict(model_type="llama", num_hidden_layers=8, hidden_size=64, num_attention_heads=4, intermediate_size=128)
    big, small = plan_search(dict(cfg, vocab_size=262_144), 2, 8, 256), plan_search(dict(cfg, vocab_size=100), 2, 8, 256)
    assert "--head_bound" in str(big) and "of this search's matrix work" in str(big)
    assert "--head_bound" not in str(small)
    assert "matrix work" not in str(plan_search(dict(cfg, vocab_size=262_144), 2, 8, 256, head_bound=True))


def test_cli_flag(tmp_path):
    "`depthprune --head_bound` runs the head-bound search and says so in the result; --plan with it counts head rows."
    from conftest import depthprune
    import json
    folder = save_tiny_model(tmp_path / "m", family="llama", num_layers=4)
    text = tmp_path / "t.txt"; text.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    r = depthprune("--model_dir", folder, "--text_file", text, "--seqlen", 32, "--nsamples", 3, "--eval_nsamples", 0,
                   "--head_bound", "--quiet", "--result_json", tmp_path / "r.json", "--delete_layer_num", 1)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "r.json").read_text())["stats"]["engine"] == "fast_head_bound"
    p = depthprune("--model_dir", folder, "--plan", "--nsamples", 8, "--seqlen", 32, "--head_bound")
    assert p.returncode == 0 and "head_bound: at best" in p.stdout, p.stderr[-2000:]
    bad = depthprune("--model_dir", folder, "--text_file", text, "--seqlen", 32, "--nsamples", 3, "--engine", "approx",
                     "--head_bound", "--quiet", "--delete_layer_num", 1)
    assert bad.returncode == 2 and "applies to the exact search" in bad.stderr and "'approx'" in bad.stderr, bad.stderr[-2000:]


def test_sleb_rounds_and_layer_importance_take_it():
    "`layer_importance(..., head_bound=True)`: the window search and SLEB's rounds (exact one-layer searches) pick as without."
    from depthprune_nb.pruner import layer_importance
    model = planted_near_ties()
    data = windows(model, N=3, T=24)
    for method in ("ppl_window", "sleb"):
        a = layer_importance(model, data, 2, method=method, progress=False)
        b = layer_importance(model, data, 2, method=method, head_bound=True, progress=False)
        assert a.deleted_layers == b.deleted_layers and abs(b.best_ppl / a.best_ppl - 1) <= 1e-5, method
