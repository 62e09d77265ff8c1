"""Repair-aware search (`depthprune_nb.recover.aware`): every window scored after its own linear repair.

- every repaired value is the perplexity (`ppl.perplexity`) of the model that `fit_linear_repair` + `temporarily_repaired`
  leave, on the same windows (rel 1e-5), and every plain value is the plain exact table's (`fast_search`): tiny models of
  several families (rotary, sliding windows, GPT-2's Conv1D, Falcon's parallel block) and SmolLM2-135M on WikiText-2;
- the maps are `fit_linear_repair`'s bit for bit; the pick is the lowest repaired value; the model is left unchanged;
- windows that cannot take a map keep their plain value and say why; a model where none can is refused before any forward.
"""
import importlib.metadata, math

import pytest
import torch
from transformers import AutoModelForCausalLM

from depthprune_nb.config import ConfigError
from depthprune_nb.engine.exact import fast_search
from depthprune_nb.parts import locate
from depthprune_nb.ppl import perplexity
from depthprune_nb.recover.aware import fit_every_window, repair_aware_search, repair_table, repairable_windows
from depthprune_nb.recover.repair import FoldError, fit_linear_repair, temporarily_repaired
from depthprune_nb.surgery import temporarily_deleted

N_LAYERS, N = 6, 2


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread): pass


@pytest.fixture(scope="session")
def checkpoint(family_checkpoint):
    return lambda family: family_checkpoint(family, N_LAYERS)


def load(path): return AutoModelForCausalLM.from_pretrained(path).eval()

def windows(k:int, seqlen:int=32, vocab:int=400, seed:int=0)->list:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (1, seqlen), generator=g) for _ in range(k)]

def state(model): return {k: v.clone() for k, v in model.state_dict().items()}

def same_state(a, b): return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

def repaired_ppl(model, data, start, n, eval_data=None)->float:
    "The brute force: fit the window's map, fold it and delete the window, run the model on the windows (start 0: no map)."
    if start == 0:
        with temporarily_deleted(model, list(range(n))): return perplexity(model, eval_data or data)
    with temporarily_repaired(model, fit_linear_repair(model, data, start, n)): return perplexity(model, eval_data or data)

def close(a, b, rel=1e-5): return math.isclose(a, b, rel_tol=rel)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2", "falcon"])
def test_repaired_values_are_the_repaired_models_perplexities(family, checkpoint):
    model, data = load(checkpoint(family)), windows(5)
    before = state(model)
    res = repair_aware_search(model, data, N, progress=False, chunk_size=2)  # 3 chunks: the chunking is exercised
    assert same_state(state(model), before), "the search changed the model"
    plain, repaired = res.stats["plain_ppl_by_start"], res.stats["repaired_ppl_by_start"]
    assert sorted(repaired) == list(range(1, N_LAYERS - N + 1)) and res.stats["not_repaired"].keys() == {0}
    for s in repaired:
        want = repaired_ppl(model, data, s, N)
        assert close(res.ppl_by_start[s], want), f"{family} start {s}: search {res.ppl_by_start[s]} vs repaired model {want}"
    assert res.ppl_by_start[0] == plain[0], "the window at layer 0 has no repair: its plain value"
    exact = fast_search(model, data, N, progress=False)
    assert close(res.baseline_ppl, exact.baseline_ppl)
    for s, v in exact.ppl_by_start.items():
        assert close(plain[s], v), f"{family} start {s}: plain {plain[s]} vs the exact table's {v}"
    assert any(abs(repaired[s] / plain[s] - 1) > 1e-4 for s in repaired), "the repair changed no window's value"
    best = min(res.ppl_by_start, key=res.ppl_by_start.get)
    assert res.deleted_layers == list(range(best, best + N)) and res.best_ppl == res.ppl_by_start[best]
    assert res.runner_up_layers is not None and res.runner_up_ppl >= res.best_ppl


def test_maps_are_fit_linear_repairs_bit_for_bit(checkpoint):
    model, data = load(checkpoint("granite")), windows(3)  # granite: residual_multiplier 0.5, a gain to divide out
    parts = locate(model)
    paths, gains, why = repairable_windows(parts, 3, data[0])
    reps = fit_every_window(parts, data, 3, paths, gains, ridge=1e-4)
    assert sorted(reps) == [1, 2, 3]
    for s, rep in reps.items():
        one = fit_linear_repair(model, data, s, 3, ridge=1e-4)
        assert torch.equal(rep.T, one.T), f"start {s}: the map differs from fit_linear_repair's"
        assert (rep.gain, rep.unexplained, rep.tokens, rep.fold_path) == (one.gain, one.unexplained, one.tokens, one.fold_path)


def test_windows_that_cannot_be_repaired_keep_their_plain_value(checkpoint):
    "qwen2_moe here: layers 0 and 3 dense, the others routed experts, so only windows 1 and 4 can take a map."
    model, data = load(checkpoint("qwen2_moe")), windows(3)
    res = repair_aware_search(model, data, N, progress=False)
    why = res.stats["not_repaired"]
    assert sorted(res.stats["repaired_ppl_by_start"]) == [1, 4] and sorted(why) == [0, 2, 3]
    assert "routed experts" in why[2] and "layers[1]" in why[2], why[2]
    for s in (0, 2, 3):
        with temporarily_deleted(model, [s, s + 1]): want = perplexity(model, data)
        assert close(res.ppl_by_start[s], want), f"start {s}: {res.ppl_by_start[s]} vs plain deletion {want}"
    for s in (1, 4): assert close(res.ppl_by_start[s], repaired_ppl(model, data, s, N))
    assert "no repair" in repair_table(res)


@pytest.mark.parametrize("family, what", [("gemma2", "post_feedforward_layernorm"), ("mixtral", "routed experts")])
def test_model_without_any_repairable_window_is_refused_before_any_forward(family, what, checkpoint):
    model = load(checkpoint(family))
    calls = []
    hooks = [layer.register_forward_pre_hook(lambda *a: calls.append(1)) for layer in locate(model).layers]
    try:
        with pytest.raises(FoldError, match=what) as e: repair_aware_search(model, windows(2), N, progress=False)
    finally:
        for h in hooks: h.remove()
    assert "no window of 2 layers can be repaired" in str(e.value) and family in str(e.value), str(e.value)
    assert not calls, f"{len(calls)} layer calls before the refusal"


def test_without_the_plain_table(checkpoint):
    model, data = load(checkpoint("llama")), windows(3)
    both = repair_aware_search(model, data, N, progress=False)
    only = repair_aware_search(model, data, N, progress=False, plain=False)
    assert only.ppl_by_start == both.ppl_by_start and only.deleted_layers == both.deleted_layers
    assert sorted(only.stats["plain_ppl_by_start"]) == [0], "only the window without a repair is scored plain"
    assert only.stats["layer_passes"] < both.stats["layer_passes"] and only.stats["head_passes"] < both.stats["head_passes"]


def test_the_criterion_is_a_parameter(checkpoint):
    "A criterion of one's own: Llama's head written out (final norm, then lm_head), each sample's NLL, averaged."
    from depthprune_nb.ppl import window_nll
    model, data = load(checkpoint("llama")), windows(3)
    res = repair_aware_search(model, data, N, progress=False)
    seen = []
    def heads(ids, keys, states):
        seen.extend(keys)
        return [[window_nll(model.lm_head(model.model.norm(h[r])), ids[r]) for r in range(ids.shape[0])] for h in states]
    mean = repair_aware_search(model, data, N, progress=False, heads=heads, reduce=lambda v: sum(v) / len(v))
    assert "base" in seen and set(range(N_LAYERS - N + 1)) <= set(seen), seen
    assert math.isclose(mean.baseline_ppl, math.log(res.baseline_ppl), rel_tol=1e-5)
    for s, v in res.ppl_by_start.items():
        assert math.isclose(mean.ppl_by_start[s], math.log(v), rel_tol=1e-5), f"start {s}: mean NLL is not log PPL"


def test_scored_on_other_windows_than_the_fits(checkpoint):
    "`score_data`: each map fitted on `data`, each window scored on `score_data`, so every repaired value is out of sample."
    model, data, other = load(checkpoint("qwen2")), windows(5), windows(3, seed=2)
    res = repair_aware_search(model, data, N, progress=False, score_data=other)
    assert res.stats["fit_layer_passes"] == len(data) * N_LAYERS and "apart" in res.stats["scored_on"]
    for s in res.stats["repaired_ppl_by_start"]:
        want = repaired_ppl(model, data, s, N, other)
        assert close(res.ppl_by_start[s], want), f"start {s}: search {res.ppl_by_start[s]} vs repaired model on other windows {want}"
    assert close(res.baseline_ppl, perplexity(model, other))
    with temporarily_deleted(model, [2, 3]): assert close(res.stats["plain_ppl_by_start"][2], perplexity(model, other))


def test_too_few_calibration_positions_are_warned_about(checkpoint, caplog):
    "Hidden size 32 here: 2 windows of 32 tokens are 2 positions per dimension of the map, 5 windows are 5."
    model = load(checkpoint("llama"))
    assert model.config.hidden_size == 32
    with caplog.at_level("WARNING", logger="depthprune_nb.recover.aware"):
        repair_aware_search(model, windows(2), N, progress=False)
    assert "fewer than 4 per dimension" in caplog.text and "64 calibration positions" in caplog.text, caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="depthprune_nb.recover.aware"):
        repair_aware_search(model, windows(5), N, progress=False)
    assert "per dimension" not in caplog.text, caplog.text


def test_refused_settings(checkpoint):
    model = load(checkpoint("llama"))
    for k, v in [("compute_dtype", "bfloat16"), ("save_gpu_memory", True), ("head_bound", True)]:
        with pytest.raises(ConfigError, match=f"does not take .*{k}"): repair_aware_search(model, windows(2), N, **{k: v})


def test_evaluation_windows_judge_the_pick_repaired(checkpoint):
    model, data, held = load(checkpoint("gpt2")), windows(4), windows(2, seed=1)
    res = repair_aware_search(model, data, N, progress=False, eval_data=held)
    assert close(res.eval_baseline_ppl, perplexity(model, held))
    assert close(res.eval_ppl, repaired_ppl(model, data, res.best_start, N, held))
    assert close(res.eval_runner_up_ppl, repaired_ppl(model, data, res.runner_up_layers[0], N, held))
    with temporarily_deleted(model, res.deleted_layers): assert close(res.stats["eval_plain_ppl"], perplexity(model, held))


# --- a real model ------------------------------------------------------------------------------------------------------

REAL = "smollm2-135m-instruct"

@pytest.fixture(scope="module")
def real_smollm2(wikitext):
    """SmolLM2 (float32) and 4 calibration windows of 128 tokens from the start of WikiText-2 test: 512 positions for
    576 x 576 maps, so every map fits its window's change almost exactly there (the search warns): an equality test only."""
    from depthprune_nb.data import text_windows
    from depthprune_nb.io.models import load_real_model
    from depthprune_nb.io.registry import MODELS, install_command
    try: [importlib.metadata.distribution(p) for p in MODELS[REAL].packages]
    except importlib.metadata.PackageNotFoundError: pytest.skip(f"{REAL} is not installed: {install_command(REAL)}")
    model, tok = load_real_model(REAL)
    return model, text_windows(tok, wikitext.read_text()[:200_000], 128, progress=False)[:4]

def test_real_model_repaired_values_are_the_repaired_models_perplexities(real_smollm2):
    "The pick, the runner-up, the plain table's pick and the last window, each against the model repaired and run."
    model, data = real_smollm2
    res = repair_aware_search(model, data, N, progress=False)
    plain = res.stats["plain_ppl_by_start"]
    print("\n" + repair_table(res))
    check = {res.best_start, res.runner_up_layers[0], min(plain, key=plain.get), max(res.ppl_by_start)}
    for s in sorted(check - {0}):
        want = repaired_ppl(model, data, s, N)
        assert close(res.ppl_by_start[s], want), f"{REAL} start {s}: search {res.ppl_by_start[s]} vs repaired model {want}"
    with temporarily_deleted(model, res.deleted_layers): assert close(plain[res.best_start], perplexity(model, data))


# ---- through ModelPruner: `repair_score_windows` --------------------------------------------------------------------------
def test_pruner_chooses_by_the_repaired_value_on_windows_apart_and_folds_the_searched_map(checkpoint):
    from depthprune_nb.config import LayerImportancePruneConfig
    from depthprune_nb.pruner import ModelPruner
    from depthprune_nb.recover.repair import apply_repair
    data, held = windows(7), windows(2, seed=1)
    ref = load(checkpoint("llama"))
    want = repair_aware_search(ref, data[:-3], N, score_data=data[-3:], eval_data=held, progress=False)
    cfg = LayerImportancePruneConfig(delete_layer_num=N, repair="linear", repair_score_windows=3, compute_dtype=None)
    pr = ModelPruner(cfg, progress=False)
    model = pr.pruning_model(load(checkpoint("llama")), data, eval_data=held)
    res = pr.result
    assert res.method == "ppl_window+linear_repair" and res.deleted_layers == want.deleted_layers
    assert res.ppl_by_start == want.ppl_by_start
    # the folded map is the one fitted on the windows the search fitted on (not on the scoring windows)
    apply_repair(ref, fit_linear_repair(ref, data[:-3], res.best_start, N))
    assert same_state(state(model), state(ref))
    rec = res.repair
    assert close(rec["eval_ppl_repaired"], perplexity(model, held)) and close(rec["eval_ppl_plain"], want.stats["eval_plain_ppl"])


def test_pruner_repair_score_windows_is_checked():
    from depthprune_nb.config import LayerImportancePruneConfig
    with pytest.raises(ConfigError, match="repair is None"): LayerImportancePruneConfig(repair_score_windows=2)
    with pytest.raises(ConfigError, match="integer >= 0"): LayerImportancePruneConfig(repair="linear", repair_score_windows=-1)
    with pytest.raises(ConfigError, match="method='ppl_window'"):
        LayerImportancePruneConfig(repair="linear", repair_score_windows=2, method="kl")


def test_pruner_refuses_scoring_windows_that_leave_none_to_fit(checkpoint):
    from depthprune_nb.config import LayerImportancePruneConfig
    from depthprune_nb.pruner import ModelPruner
    model = load(checkpoint("llama")); before = state(model)
    cfg = LayerImportancePruneConfig(delete_layer_num=N, repair="linear", repair_score_windows=3)
    with pytest.raises(ConfigError, match="leaves no calibration window"): ModelPruner(cfg, progress=False).pruning_model(model, windows(3))
    assert same_state(state(model), before)
