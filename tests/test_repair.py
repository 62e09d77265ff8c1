"""Linear repair (`depthprune_nb.recover.repair`): a least-squares map for a deleted window, folded into the down projection of
the layer before the cut.

- exact: where the deleted block is exactly linear in what the map sees, the repaired model computes the unpruned one;
- every family of `depthprune_nb.testing.FAMILIES`: the repaired model saves (the package's `save_pruned`) and reloads
  with identical logits and greedy generations and the config plain deletion gives, or the repair is refused with a
  message that names the family, the layer and the field;
- SmolLM2-135M-Instruct on WikiText-2: repaired beats plain deletion on evaluation windows the fit never saw.
"""
import importlib.metadata, time

import pytest
import torch
from transformers import AutoModelForCausalLM

from depthprune_nb.config import ConfigError
from depthprune_nb.parts import locate
from depthprune_nb.pruner import save_pruned
from depthprune_nb.recover.repair import FoldError, apply_repair, fit_linear_repair, repair_window, temporarily_repaired
from depthprune_nb.surgery import delete_layers
from depthprune_nb.testing import FAMILIES, save_tiny_model

N_LAYERS, START, N = 6, 2, 2  # the map folds into layer 1
# families whose layer START-1 cannot take a folded map, and what the refusal must name
REFUSED = {f: "post_feedforward_layernorm" for f in ("gemma2", "gemma3_text", "olmo2", "olmo3", "exaone4")}
REFUSED.update({f: "routed experts" for f in ("mixtral", "qwen2_moe", "qwen3_moe", "gpt_oss", "llama4_text")})


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread): pass


@pytest.fixture(scope="session")
def checkpoint(family_checkpoint):
    "A saved tiny model per family with N_LAYERS layers, written once per session."
    return lambda family: family_checkpoint(family, N_LAYERS)


def load(path): return AutoModelForCausalLM.from_pretrained(path).eval()

def windows(k:int, seqlen:int=32, vocab:int=400, seed:int=0)->list:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (1, seqlen), generator=g) for _ in range(k)]

@torch.no_grad()
def logits(model, data): return torch.cat([model(ids, use_cache=False).logits for ids in data])

def greedy(model, ids): return model.generate(ids[:, :8], max_new_tokens=8, min_new_tokens=8, do_sample=False).tolist()

def state(model): return {k: v.clone() for k, v in model.state_dict().items()}

def config(model)->dict: return {k: v for k, v in model.config.to_dict().items() if k != "_name_or_path"}

def same_state(a, b): return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- exact where the deleted block is linear ------------------------------------------------------------------------

def _linear_block_model(path, start, d_fold:int=16, seed:int=0):
    """A tiny Llama in which the residual stream before the cut lives in coordinates `d_fold:` and the down projection of
    layer `start-1` writes only coordinates `:d_fold`; the deleted layers will be replaced by `h -> h (I + A)` with A
    reading only those coordinates. Then the state after the window is `y + D (I + A)^n` exactly: T = (I + A)^n."""
    model = load(path)
    P = slice(0, d_fold)
    layers = model.model.layers
    with torch.no_grad():
        model.model.embed_tokens.weight[:, P] = 0
        for i in range(start):
            layers[i].self_attn.o_proj.weight[P, :] = 0
            if i < start - 1: layers[i].mlp.down_proj.weight[P, :] = 0
        layers[start - 1].mlp.down_proj.weight[d_fold:, :] = 0
    d = model.config.hidden_size
    A = torch.zeros(d, d)
    A[P] = torch.randn(d_fold, d, generator=torch.Generator().manual_seed(seed)) * 0.3
    return model, torch.eye(d) + A

def _replace_by_linear(layers, idx, M):
    "Forward hooks making `layers[i]` for i in idx compute `h @ M` (exactly linear); the handles."
    def linear(module, args, kwargs, output):
        h = args[0] if args else kwargs["hidden_states"]
        return h @ M
    return [layers[i].register_forward_hook(linear, with_kwargs=True) for i in idx]

def test_exact_when_the_deleted_block_is_linear(checkpoint):
    "Tolerance: 1e-4 on logits of order 1 (a float64 fit of float32 states; ridge 1e-12 on a rank-16 X^T X)."
    start, n = 3, 2
    model, M = _linear_block_model(checkpoint("llama"), start)
    data, held = windows(4, 48), windows(2, 48, seed=1)
    handles = _replace_by_linear(model.model.layers, range(start, start + n), M)
    try:
        full = logits(model, held)
        rep = fit_linear_repair(model, data, start, n, ridge=1e-12)
    finally:
        for h in handles: h.remove()
    want = torch.linalg.matrix_power(M.double(), n)
    P = slice(0, 16)  # the rows of T that meet a non-zero input; the others multiply zeros
    assert (rep.T[P] - want[P]).abs().max() < 1e-4, "the fitted map is not (I + A)^n"
    assert rep.unexplained < 1e-8, f"unexplained {rep.unexplained:.2e}: the fit is not exact"
    plain = logits(delete_layers(load(checkpoint("llama")), list(range(start, start + n))), held)
    apply_repair(model, rep)
    got = logits(model, held)
    err, gap = (got - full).abs().max().item(), (plain - full).abs().max().item()
    assert err < 1e-4, f"repaired logits differ from the unpruned model's by {err:.2e}"
    assert gap > 1e-2, f"test too weak: plain deletion is already within {gap:.2e} of the unpruned model"


# --- every family: fold, save, reload ---------------------------------------------------------------------------------

@pytest.mark.parametrize("family", list(FAMILIES))
def test_repair_saves_and_reloads(family, checkpoint, tmp_path):
    path = checkpoint(family)
    model, data = load(path), windows(4)
    before = state(model)
    if family in REFUSED:
        with pytest.raises(FoldError) as e: repair_window(model, data, START, N)
        msg = str(e.value)
        assert family in msg and f"layers[{START - 1}]" in msg and REFUSED[family] in msg, msg
        assert same_state(state(model), before) and locate(model).num_layers == N_LAYERS, "a refused repair changed the model"
        return
    rep = repair_window(model, data, START, N)
    assert rep.deleted == [START, START + 1] and 0 <= rep.unexplained < 1, rep
    plain = delete_layers(load(path), rep.deleted)
    assert config(model) == config(plain), "the config differs from plain deletion's"
    ids = data[0]
    want = logits(model, [ids])
    assert (want - logits(plain, [ids])).abs().max() > 1e-4, "the fold changed nothing"
    gen = greedy(model, ids)
    out = save_pruned(model, tmp_path / "repaired")
    back, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    back.eval()
    assert type(back) is type(model) and config(back) == config(plain)
    torch.testing.assert_close(logits(back, [ids]), want, rtol=0, atol=0)
    assert greedy(back, ids) == gen, "reloaded generation differs"


# --- refusals and bookkeeping ------------------------------------------------------------------------------------------

def test_window_at_layer_0_is_refused(checkpoint):
    model = load(checkpoint("llama"))
    with pytest.raises(FoldError, match="start=0: no decoder layer precedes the cut"): fit_linear_repair(model, windows(2), 0, 2)

@pytest.mark.parametrize("start, n, msg", [(5, 2, "window (start, n)"), (2, 0, "n=0 is invalid"), (-1, 2, "start=-1 is invalid"), (1.0, 2, "start=1.0 is invalid"), (1, 6, "window (start, n)")])
def test_bad_window(start, n, msg, checkpoint):
    with pytest.raises(ConfigError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        fit_linear_repair(load(checkpoint("llama")), windows(2), start, n)

def test_window_to_the_end(checkpoint):
    "A window that ends at the last layer fits to the state entering the final norm."
    model, data = load(checkpoint("llama")), windows(4)
    full = logits(model, data)
    rep = repair_window(model, data, N_LAYERS - 2, 2)
    plain = logits(delete_layers(load(checkpoint("llama")), rep.deleted), data)
    assert locate(model).num_layers == N_LAYERS - 2 and rep.unexplained < 1
    assert (logits(model, data) - full).abs().mean() < (plain - full).abs().mean(), "repair moved the fitted data away"

def test_gemma2_refusal_names_the_norm(checkpoint):
    with pytest.raises(FoldError, match=r"gemma2: layers\[2\]\.post_feedforward_layernorm normalizes the MLP output"):
        fit_linear_repair(load(checkpoint("gemma2")), windows(2), 3, 2)

def test_granite_residual_multiplier_is_measured(checkpoint):
    "Granite adds `residual_multiplier * mlp` (0.5 here): the fit measures that gain and divides it out."
    rep = fit_linear_repair(load(checkpoint("granite")), windows(4), START, N)
    assert abs(rep.gain - 0.5) < 1e-5, rep.gain

def test_apply_once_and_temporarily(checkpoint):
    model, data = load(checkpoint("qwen2")), windows(4)
    rep = fit_linear_repair(model, data, START, N)
    before, full = state(model), logits(model, data[:1])
    with temporarily_repaired(model, rep) as m:
        assert locate(m).num_layers == N_LAYERS - N
        inside = logits(m, data[:1])
    assert same_state(state(model), before) and torch.equal(logits(model, data[:1]), full), "not restored exactly"
    apply_repair(model, rep)
    torch.testing.assert_close(logits(model, data[:1]), inside, rtol=0, atol=0)
    with pytest.raises(FoldError, match="fitted on a model with 6 layers, this one has 4"): apply_repair(model, rep)


# --- a real model ------------------------------------------------------------------------------------------------------

REAL = "smollm2-135m-instruct"

@pytest.fixture(scope="module")
def real_smollm2(wikitext):
    "SmolLM2 (float32), 32 calibration windows of 256 tokens from the start of WikiText-2 test, 8 evaluation windows from its middle."
    from depthprune_nb.data import text_windows
    from depthprune_nb.io.models import load_real_model
    from depthprune_nb.io.registry import MODELS, install_command
    try: [importlib.metadata.distribution(p) for p in MODELS[REAL].packages]
    except importlib.metadata.PackageNotFoundError: pytest.skip(f"{REAL} is not installed: {install_command(REAL)}")
    model, tok = load_real_model(REAL)
    wins = text_windows(tok, wikitext.read_text(), 256, progress=False)
    mid = len(wins) // 2
    return model, wins[:32], wins[mid:mid + 8]

@pytest.mark.parametrize("start, n", [(13, 2), (14, 4)])
def test_real_model_repair_beats_plain_deletion(start, n, real_smollm2):
    from depthprune_nb.ppl import perplexity
    from depthprune_nb.surgery import temporarily_deleted
    model, calib, held = real_smollm2
    t = time.time()
    rep = fit_linear_repair(model, calib, start, n)
    with temporarily_deleted(model, rep.deleted): plain = perplexity(model, held)
    with temporarily_repaired(model, rep): repaired = perplexity(model, held)
    print(f"\n{REAL} {start}-{start + n - 1}: eval PPL plain {plain:.2f} -> repaired {repaired:.2f} "
          f"(unexplained {rep.unexplained:.3f}; {time.time() - t:.0f} s)")
    assert repaired < plain, f"repair did not help: eval PPL {repaired:.2f} >= plain deletion's {plain:.2f}"


# --- the pruner: repair="linear" end to end ----------------------------------------------------------------------------

def test_pruner_repair_is_repair_window_on_the_calibration_windows(checkpoint):
    "ModelPruner(repair='linear') with an explicit pick: the same fit and fold as repair_window, the record says what was done."
    from depthprune_nb.config import LayerImportancePruneConfig
    from depthprune_nb.pruner import ModelPruner
    data, held = windows(4), windows(2, seed=1)
    want = load(checkpoint("qwen2"))
    rep = repair_window(want, data, START, N)
    model = load(checkpoint("qwen2"))
    pruner = ModelPruner(LayerImportancePruneConfig(delete_layers_index=[START, START + 1], repair="linear"), progress=False)
    pruner.pruning_model(model, data, eval_data=held)
    torch.testing.assert_close(logits(model, held), logits(want, held), rtol=0, atol=0)
    r = pruner.result.repair
    (fold,) = r["folds"]
    assert (fold["deleted"], fold["fold_layer"], fold["fold_path"]) == ([START, START + 1], START - 1, "mlp.down_proj")
    assert fold["unexplained"] == pytest.approx(rep.unexplained) and fold["tokens"] == rep.tokens
    plain = delete_layers(load(checkpoint("qwen2")), rep.deleted)
    from depthprune_nb.ppl import perplexity
    assert r["eval_ppl_plain"] == pytest.approx(perplexity(plain, held), rel=1e-6)
    assert r["eval_ppl_repaired"] == pytest.approx(perplexity(model, held), rel=1e-6)
    assert pruner.result.deleted_layers == [START, START + 1] and pruner.result.num_layers_after == N_LAYERS - N


def test_pruner_repairs_each_run_in_order_and_a_run_at_0_plainly(checkpoint):
    "Runs [0], [2, 3], [5]: layer 0 deleted plainly (noted), then each later run fitted on the model the runs below left."
    from depthprune_nb.config import LayerImportancePruneConfig
    from depthprune_nb.pruner import ModelPruner
    data = windows(4)
    want = delete_layers(load(checkpoint("llama")), [0])
    repair_window(want, data, 1, 2)   # layers 2-3, now 1-2
    repair_window(want, data, 2, 1)   # layer 5, now 2
    model = load(checkpoint("llama"))
    pruner = ModelPruner(LayerImportancePruneConfig(delete_layers_index=[0, 2, 3, 5], repair="linear"), progress=False)
    pruner.pruning_model(model, data)
    torch.testing.assert_close(logits(model, data[:1]), logits(want, data[:1]), rtol=0, atol=0)
    r = pruner.result.repair
    assert [(f["deleted"], f["fold_layer"], f["fold_layer_after"]) for f in r["folds"]] == [([2, 3], 1, 0), ([5], 4, 1)]
    assert r["notes"] == ["layer 0 deleted without repair: no layer precedes the cut"]
    assert "calib_ppl_plain" in r and "calib_ppl_repaired" in r and "eval_ppl_plain" not in r  # no evaluation data given


def test_pruner_repair_is_all_or_nothing(checkpoint, monkeypatch):
    "A fit that fails after an earlier run was folded leaves the model exactly as it was."
    import depthprune_nb.pruner as P
    from depthprune_nb.config import LayerImportancePruneConfig
    model, data = load(checkpoint("llama")), windows(4)
    before = state(model)
    real, calls = P.fit_linear_repair, []
    def second_fails(*a, **k):
        calls.append(1)
        if len(calls) == 2: raise FoldError("injected")
        return real(*a, **k)
    monkeypatch.setattr(P, "fit_linear_repair", second_fails)
    pruner = P.ModelPruner(LayerImportancePruneConfig(delete_layers_index=[1, 4], repair="linear"), progress=False)
    with pytest.raises(FoldError, match="injected"): pruner.pruning_model(model, data)
    assert len(calls) == 2 and same_state(state(model), before) and locate(model).num_layers == N_LAYERS


@pytest.mark.parametrize("family, method", [("gemma2", "ppl_window"), ("mixtral", "block_influence")])
def test_pruner_refuses_an_unfoldable_family_before_the_search(family, method, checkpoint, monkeypatch):
    import depthprune_nb.pruner as P
    from depthprune_nb.config import LayerImportancePruneConfig
    model, data = load(checkpoint(family)), windows(2)
    before = state(model)
    monkeypatch.setattr(P.ModelPruner, "_choose_window", lambda *a, **k: pytest.fail("the search ran before the refusal"))
    pruner = P.ModelPruner(LayerImportancePruneConfig(delete_layer_num=2, method=method, repair="linear"), progress=False)
    with pytest.raises(FoldError) as e: pruner.pruning_model(model, data)
    assert family in str(e.value) and "layers[0]" in str(e.value) and REFUSED[family] in str(e.value), str(e.value)
    assert same_state(state(model), before) and locate(model).num_layers == N_LAYERS


def test_pruner_repair_after_a_search_and_the_saved_result(checkpoint, tmp_path):
    "A searched pick, repaired and saved: the checkpoint reloads with the repaired logits; prune_result.json records it."
    import json
    from depthprune_nb.config import LayerImportancePruneConfig
    from depthprune_nb.pruner import ModelPruner
    from depthprune_nb.result import PruneResult
    model, data, held = load(checkpoint("mistral")), windows(4), windows(2, seed=1)
    pruner = ModelPruner(LayerImportancePruneConfig(delete_layer_num=2, repair="linear"), engine="reference", progress=False)
    pruner.pruning_model(model, data, eval_data=held)
    res = pruner.result
    r = res.repair
    repaired = [i for f in r["folds"] for i in f["deleted"]]
    assert sorted(repaired + ([0, 1] if r["notes"] else [])) == res.deleted_layers, r
    out = save_pruned(model, tmp_path / "out", result=res)
    back = load(out)
    torch.testing.assert_close(logits(back, held), logits(model, held), rtol=0, atol=0)
    saved = PruneResult.from_json(out / "prune_result.json")
    assert saved.repair == json.loads(json.dumps(r)) and saved.method == "ppl_window" and saved.deleted_layers == res.deleted_layers
