"""Batched heads and the mixed-precision search.

- Batched heads: the same tables (rel 1e-6) as one stream per head call, on every family in `depthprune_nb.testing`.
- `compute_dtype="bfloat16"`: the table in bfloat16, the contenders rescored in float32; the pick, its PPL and the
  baseline are float32's, the model ends bit-identical in float32 (also after a failed search), and it works with
  early abort, the approximate mode and mix mode.
- A planted near-tie (two windows whose float32 PPLs differ by far less than bfloat16's error, tied in bfloat16) that
  a bfloat16 table alone gets wrong and the confirmation gets right."""
import json, math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from depthprune_nb.engine import sweeps
from depthprune_nb.config import ConfigError, LayerImportancePruneConfig
from depthprune_nb import approx_search, fast_search
from depthprune_nb.engine.precision import resolve_compute_dtype as low_precision, weights_cast, to_rescore
from depthprune_nb.pruner import ModelPruner, layer_importance
from depthprune_nb.result import PruneResult
from depthprune_nb.testing import FAMILIES, save_tiny_model
from test_engine import trained  # noqa: F401 -- the engine tests' fixture: the same briefly trained tiny Llama

L, SEQLEN, NSAMPLES = 4, 16, 3
from conftest import WIKITEXT as TEXT


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models run on one thread


def tiny(tmp_path_factory, family, num_layers=L):
    path = save_tiny_model(tmp_path_factory.mktemp(family), family=family, num_layers=num_layers, init_std=0.3)
    return AutoModelForCausalLM.from_pretrained(path).eval()


def windows(model, k=NSAMPLES, seqlen=SEQLEN, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, model.config.vocab_size, (1, seqlen), generator=g) for _ in range(k)]


def snapshot(model): return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before, what):
    for k, v in model.state_dict().items():
        assert v.dtype == before[k].dtype and torch.equal(v, before[k]), f"{what}: {k} changed ({v.dtype})"


def rel(a, b): return abs(a / b - 1)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_batched_head_and_mixed_precision_on_every_family(family, tmp_path_factory):
    model = tiny(tmp_path_factory, family)
    data, before = windows(model), snapshot(model)
    one = fast_search(model, data, 1, head_batch=1, progress=False)
    batched = fast_search(model, data, 1, progress=False)
    assert batched.stats["head_calls"] < one.stats["head_calls"], (batched.stats["head_calls"], one.stats["head_calls"])
    assert rel(batched.baseline_ppl, one.baseline_ppl) <= 1e-6
    for s, v in one.ppl_by_start.items():
        assert rel(batched.ppl_by_start[s], v) <= 1e-6, f"{family} start {s}: batched {batched.ppl_by_start[s]} vs {v}"
    mixed = fast_search(model, data, 1, compute_dtype="bfloat16", progress=False)
    assert_unchanged(model, before, family)
    conf = mixed.stats["confirm"]
    assert mixed.deleted_layers == one.deleted_layers, f"{family}: mixed picked {mixed.deleted_layers}, float32 {one.deleted_layers}"
    assert rel(mixed.baseline_ppl, one.baseline_ppl) <= 1e-6 and mixed.stats["compute_dtype"] == "bfloat16"
    assert set(conf["rescored"]) | set(mixed.low_precision_starts) == set(one.ppl_by_start)
    assert not set(conf["rescored"]) & set(mixed.low_precision_starts)
    for s in conf["rescored"]: assert rel(mixed.ppl_by_start[s], one.ppl_by_start[s]) <= 1e-6, (family, s)


def test_low_precision_validates_and_prefers_float16_without_bfloat16(tmp_path_factory, monkeypatch):
    model = tiny(tmp_path_factory, "llama")
    assert low_precision(model, "bfloat16") == torch.bfloat16 and low_precision(model, torch.float16) == torch.float16
    assert low_precision(model, None) is None and low_precision(model, "float32") is None  # the model's own: plain search
    with pytest.raises(ConfigError, match="'bfloat16', 'float16', 'float32'"): low_precision(model, "bf16")
    with pytest.raises(ConfigError, match="'bfloat16', 'float16', 'float32'"):
        fast_search(model, windows(model), 1, compute_dtype="half", progress=False)
    with pytest.raises(ConfigError, match="compute_dtype='bf16' is invalid"): LayerImportancePruneConfig(compute_dtype="bf16")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert low_precision(model, "bfloat16", save_gpu_memory=True, device="cuda") == torch.float16
    assert low_precision(model, "bfloat16") == torch.bfloat16  # the CPU keeps bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert low_precision(model, "bfloat16", save_gpu_memory=True, device="cuda") == torch.bfloat16
    half = tiny(tmp_path_factory, "llama").to(torch.bfloat16)
    assert low_precision(half, "bfloat16") is None
    with pytest.raises(ConfigError, match="not a lower precision"): low_precision(half, "float32")


def test_a_failed_search_leaves_the_model_as_it_was(tmp_path_factory, monkeypatch):
    model = tiny(tmp_path_factory, "llama")
    data, before = windows(model), snapshot(model)
    params = [p for p in model.parameters()]
    def boom(self, *a, **k):
        assert next(self.model.parameters()).dtype == torch.bfloat16, "the search must run on the cast weights"
        raise RuntimeError("out of memory, say")
    monkeypatch.setattr(sweeps.Engine, "sweep", boom)
    with pytest.raises(RuntimeError, match="out of memory"):
        fast_search(model, data, 1, compute_dtype="bfloat16", progress=False)
    assert_unchanged(model, before, "after a failed search")
    assert [p for p in model.parameters()] == params  # the same Parameter objects


@pytest.mark.parametrize("n", [1, 2])
def test_mixed_precision_with_early_abort_approx_and_mix_mode(trained, n):
    model, data = trained
    before = snapshot(model)
    exact = fast_search(model, data, n, progress=False)
    runs = {
        "full table": fast_search(model, data, n, compute_dtype="bfloat16", progress=False),
        "early abort": fast_search(model, data, n, early_abort=True, chunk_size=1, compute_dtype="bfloat16", progress=False),
        "mix mode": fast_search(model, data, n, save_gpu_memory=True, device="cpu", chunk_size=3,
                                compute_dtype="bfloat16", progress=False),
        "approx": approx_search(model, data, n, keep_exact=2, first_samples=2, compute_dtype="bfloat16", progress=False),
        "reference engine": layer_importance(model, data, n, engine="reference", compute_dtype="bfloat16", progress=False),
    }
    assert_unchanged(model, before, "after the searches")
    for name, r in runs.items():
        assert r.deleted_layers == exact.deleted_layers, f"{name}: {r.deleted_layers} vs float32 {exact.deleted_layers}"
        assert rel(r.best_ppl, exact.best_ppl) <= 1e-6 and rel(r.baseline_ppl, exact.baseline_ppl) <= 1e-6, name
        assert r.best_start not in r.low_precision_starts and r.low_precision_starts, name
        for s in set(r.ppl_by_start) - set(r.low_precision_starts):
            assert rel(r.ppl_by_start[s], exact.ppl_by_start[s]) <= 1e-6, (name, s)
    ea, ap = runs["early abort"], runs["approx"]
    assert set(ea.lower_bound_starts) <= set(ea.low_precision_starts)  # a stopped window, never rescored, stays a bf16 bound
    assert set(ap.estimated_starts) <= set(ap.low_precision_starts) and not set(ap.stats["confirm"]["rescored"]) & set(ap.estimated_starts)
    assert runs["mix mode"].stats["mix_mode"] and runs["mix mode"].stats["weight_moves_per_chunk_max"] <= 6
    r = runs["full table"]
    back = PruneResult.from_json(r.to_json())
    assert back.low_precision_starts == r.low_precision_starts and back.deleted_layers == r.deleted_layers
    rows = {int(l.split()[0]): l for l in str(r).splitlines()[2:2 + len(r.ppl_by_start)]}
    for s, row in rows.items(): assert ("(low precision)" in row) == (s in r.low_precision_starts), row
    import matplotlib; matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ax = r.plot()
    sq = [c for c in ax.collections if "not confirmed" in c.get_label()]
    assert len(sq) == 1 and sorted(sq[0].get_offsets()[:, 0]) == r.low_precision_starts
    plt.close("all")
    pr = ModelPruner(LayerImportancePruneConfig(delete_layer_num=n, compute_dtype="bfloat16"), progress=False).search(model, data)
    assert pr.deleted_layers == exact.deleted_layers and pr.low_precision_starts == r.low_precision_starts


def near_tie_model(tmp_path_factory, delta=2.0 ** -10):
    """Two decoder layers, identical in bfloat16: layer B is layer A with every weight scaled by (1 + delta), delta below
    bfloat16's half ulp, so both round to A's (exactly bfloat16-representable) weights. Deleting A or B is then the very
    same computation in bfloat16 (a tie, which goes to window 0), and differs slightly in float32."""
    model = tiny(tmp_path_factory, "llama", num_layers=2)
    a, b = model.model.layers
    with torch.no_grad():
        for pa, pb in zip(a.parameters(), b.parameters()):
            pa.copy_(pa.to(torch.bfloat16).float())
            pb.copy_(pa * (1 + delta))
            assert torch.equal(pb.to(torch.bfloat16), pa.to(torch.bfloat16))
    return model


def test_near_tie_is_caught_by_the_confirmation(tmp_path_factory):
    model = near_tie_model(tmp_path_factory)
    data = windows(model, k=4, seqlen=32)
    exact = fast_search(model, data, 1, progress=False)
    if exact.best_start == 0:  # make window 1 float32's best: swap which layer carries the scaled weights
        a, b = model.model.layers
        with torch.no_grad():
            for pa, pb in zip(a.parameters(), b.parameters()): t = pa.clone(); pa.copy_(pb); pb.copy_(t)
        exact = fast_search(model, data, 1, progress=False)
    assert exact.best_start == 1, exact.ppl_by_start
    with weights_cast(model, torch.bfloat16):
        pure = fast_search(model, data, 1, progress=False)
    assert pure.ppl_by_start[0] == pure.ppl_by_start[1] and pure.best_start == 0, pure.ppl_by_start  # bf16 alone: wrong
    gap = rel(exact.ppl_by_start[0], exact.ppl_by_start[1])
    bf16_err = max(rel(pure.ppl_by_start[s], exact.ppl_by_start[s]) for s in (0, 1))  # bfloat16's error on these windows
    assert 0 < gap < bf16_err, (gap, bf16_err)  # the float32 gap is below bfloat16's own error
    mixed = fast_search(model, data, 1, compute_dtype="bfloat16", progress=False)
    assert mixed.best_start == 1, (mixed.ppl_by_start, mixed.stats["confirm"])
    assert mixed.low_precision_starts == [] and rel(mixed.best_ppl, exact.best_ppl) <= 1e-6
    assert mixed.stats["confirm"]["margin_rel"] >= bf16_err


def test_margin_widens_when_the_rescored_windows_disagree_more(monkeypatch):
    "The margin follows the measured disagreement: a rescored window that disagrees more widens it."
    assert to_rescore({0: 10.0, 1: 10.05, 2: 10.3}, {0: 10.01}, 0.002) == []
    assert to_rescore({0: 10.0, 1: 10.05, 2: 10.3}, {0: 10.01}, 0.01) == [1]
    assert to_rescore({0: 10.0, 1: 10.05, 2: 10.3}, {0: 10.01, 1: 10.2}, 0.04) == [2]
    assert to_rescore({0: 10.0, 1: float("nan")}, {0: 10.01}, 0.0) == [1]  # not finite in low precision: rescore


@pytest.mark.skipif(not TEXT.exists(), reason=f"WikiText-2 text not found at {TEXT}")
def test_cli_compute_dtype(tmp_path):
    from depthprune_nb.cli.prune import main
    model_dir = save_tiny_model(tmp_path / "m", family="llama", num_layers=4)
    out = tmp_path / "r.json"
    assert main([f"--model_dir={model_dir}", "--delete_layer_num", "1", "--text_file", str(TEXT), "--seqlen", "32",
                 "--nsamples", "4", "--quiet", "--result_json", str(out), "--compute_dtype", "bfloat16"]) == 0
    d = json.loads(out.read_text())
    assert d["stats"]["compute_dtype"] == "bfloat16" and "low_precision_starts" in d
    assert d["deleted_layers"][0] not in d["low_precision_starts"]
