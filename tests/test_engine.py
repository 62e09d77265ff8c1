"""The fast engine against the brute force: the same PPL table (rel 1e-5, float32) and the same chosen
window, on a tiny random model of every family in `depthprune_nb.testing`, for n = 1, 2 and L-1,
with mix mode on and off, `device_map="auto"`, and chunk sizes that do and do not divide the samples."""
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from depthprune_nb.engine import sweeps
from depthprune_nb import approx_search, fast_search
from depthprune_nb.testing import train_on_arithmetic
from depthprune_nb.parts import locate
from depthprune_nb.result import PruneResult
from depthprune_nb.engine.reference import reference_search
from depthprune_nb.testing import FAMILIES, save_tiny_model

L, SEQLEN, NSAMPLES = 4, 16, 3


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models run on one thread


def tiny(tmp_path_factory, family, num_layers=L, **load_kw):
    path = save_tiny_model(tmp_path_factory.mktemp(family), family=family, num_layers=num_layers, init_std=0.3)
    return AutoModelForCausalLM.from_pretrained(path, **load_kw).eval()


def windows(model, k=NSAMPLES, seqlen=SEQLEN, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, model.config.vocab_size, (1, seqlen), generator=g) for _ in range(k)]


def assert_same(r, ref, what, tol=1e-5):
    "`r` (fast) has `ref`'s baseline, table and choice; stopped windows only a lower bound below the true PPL."
    assert r.deleted_layers == ref.deleted_layers, f"{what}: chose {r.deleted_layers}, reference {ref.deleted_layers}"
    assert math.isclose(r.baseline_ppl, ref.baseline_ppl, rel_tol=tol), f"{what}: baseline {r.baseline_ppl} vs {ref.baseline_ppl}"
    assert set(r.ppl_by_start) == set(ref.ppl_by_start), f"{what}: windows {sorted(r.ppl_by_start)}"
    for s, v in ref.ppl_by_start.items():
        if s in r.lower_bound_starts:
            assert r.ppl_by_start[s] <= v * (1 + 1e-9), f"{what}: lower bound {r.ppl_by_start[s]} above true PPL {v} (start {s})"
        else:
            assert math.isclose(r.ppl_by_start[s], v, rel_tol=tol), \
                f"{what}: start {s}: fast {r.ppl_by_start[s]} vs reference {v} (rel {r.ppl_by_start[s] / v - 1:.2e})"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_fast_equals_reference_on_every_family(family, tmp_path_factory):
    model = tiny(tmp_path_factory, family)
    data = windows(model)
    for n in (1, 2, L - 1):
        ref = reference_search(model, data, n, progress=False)
        variants = {
            "plain, chunk 2 (does not divide 3)": dict(chunk_size=2),
            "early abort, chunk 1": dict(early_abort=True, chunk_size=1),
            "mix mode, chunk 3, streams batched": dict(save_gpu_memory=True, device="cpu", chunk_size=3, call_tokens=10**6),
        }
        if n == 2:  # no room for kept start states; logits one position at a time
            variants["early abort, 1-byte memory budget"] = dict(early_abort=True, chunk_size=1, memory_budget=1)
        for name, kw in variants.items():
            r = fast_search(model, data, n, progress=False, **kw)
            assert_same(r, ref, f"{family} n={n} {name}")
            assert r.stats["layer_passes"] == NSAMPLES * (L + (L - n) * (L - n + 1) // 2) or kw.get("early_abort"), r.stats
        assert r.stats["weight_moves_per_chunk_max"] <= L


@pytest.mark.parametrize("family", ["llama", "opt", "falcon", "gemma3_text"])
def test_device_map_auto_and_hooks_restored(family, tmp_path_factory):
    model = tiny(tmp_path_factory, family, device_map="auto")
    data = windows(model)
    layers = locate(model).layers
    before = [layer.__dict__.get("forward") for layer in layers]
    for n in (1, 2):
        ref = reference_search(model, data, n, progress=False)
        assert_same(fast_search(model, data, n, progress=False), ref, f"{family} device_map=auto n={n}")
        assert_same(fast_search(model, data, n, save_gpu_memory=True, progress=False), ref, f"{family} auto+mix n={n}")
    assert [layer.__dict__.get("forward") for layer in layers] == before, "layer forwards not restored"


def test_reference_mix_mode_agrees_too(tmp_path_factory):
    model = tiny(tmp_path_factory, "qwen2_moe")
    data = windows(model)
    ref = reference_search(model, data, 2, save_gpu_memory=True, device="cpu", progress=False)
    assert_same(fast_search(model, data, 2, save_gpu_memory=True, device="cpu", chunk_size=2, progress=False), ref, "qwen2_moe mix")


def test_mix_mode_moves_each_layer_once_per_chunk(tmp_path_factory):
    model = tiny(tmp_path_factory, "llama", num_layers=6)
    data = windows(model, k=5)
    r = fast_search(model, data, 2, save_gpu_memory=True, device="cpu", chunk_size=2, progress=False)
    assert r.stats["num_chunks"] == 3 and r.stats["weight_moves_per_chunk_max"] == 6
    assert r.stats["weight_moves"] == 3 * 6 + r.stats["setup_weight_moves"] and r.stats["setup_weight_moves"] <= 1
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_tests_can_fail_replaying_one_mask_for_all_layers(tmp_path_factory, monkeypatch):
    "A sanity check on the check: if every layer got layer 0's call (sliding mask), hybrid models would disagree."
    model = tiny(tmp_path_factory, "gemma3_text")
    data = windows(model, seqlen=24)  # longer than the sliding window (8), so the masks differ
    ref = reference_search(model, data, 1, progress=False)
    real = sweeps.probe_layer_calls
    def one_call_for_all(*a, **k):
        h, calls = real(*a, **k)
        return h, [calls[0]] * len(calls)
    monkeypatch.setattr(sweeps, "probe_layer_calls", one_call_for_all)
    with pytest.raises(AssertionError):
        assert_same(fast_search(model, data, 1, progress=False), ref, "gemma3_text with one mask")


def _trained_llama(tmp_path_factory, steps=60):
    "A tiny Llama trained for a few seconds on arithmetic sequences: its layers matter unequally, as in real models."
    return train_on_arithmetic(tiny(tmp_path_factory, "llama", num_layers=6), steps)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return _trained_llama(tmp_path_factory)


@pytest.mark.parametrize("n", [1, 2])
def test_early_abort_stops_hopeless_windows_and_keeps_the_choice(trained, n):
    model, data = trained
    ref = reference_search(model, data, n, progress=False)
    r = fast_search(model, data, n, early_abort=True, chunk_size=1, progress=False)
    assert_same(r, ref, f"trained llama early abort n={n}")
    assert r.lower_bound_starts, f"nothing was stopped early: {ref.ppl_by_start}"
    full = fast_search(model, data, n, chunk_size=1, progress=False)
    assert r.stats["prefix_states_kept"] and r.stats["layer_passes"] < full.stats["layer_passes"], (r.stats, full.stats)
    slow = fast_search(model, data, n, early_abort=True, chunk_size=1, memory_budget=1, progress=False)
    assert_same(slow, ref, f"trained llama early abort n={n}, no kept states")
    assert not slow.stats["prefix_states_kept"] and slow.lower_bound_starts == r.lower_bound_starts
    assert set(r.stats["stopped_after_chunk"]) == set(r.lower_bound_starts)
    assert ">=" in str(r)


def test_approx_survivors_are_exact_and_cheaper(trained):
    model, data = trained
    exact = fast_search(model, data, 1, progress=False)
    a = approx_search(model, data, 1, keep_exact=2, first_samples=2, progress=False)
    survivors = set(a.ppl_by_start) - set(a.estimated_starts)
    assert a.estimated_starts == a.stats["estimated_starts"] and not a.lower_bound_starts
    assert len(survivors) == 2 and a.best_start in survivors
    rows = {int(l.split()[0]): l for l in str(a).splitlines()[2:] if l.split()[0].isdigit()} # the table's rows, not the lines under it
    for s in a.ppl_by_start:  # estimates are marked in the table, exact rows are not
        assert ("(estimate)" in rows[s] and "~" in rows[s]) == (s in a.estimated_starts), rows[s]
    assert PruneResult.from_json(a.to_json()).estimated_starts == a.estimated_starts
    import matplotlib; matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ax = a.plot()  # estimates drawn as hollow circles with their own legend entry, never as exact points
    hollow = [c for c in ax.collections if "estimate" in c.get_label()]
    assert len(hollow) == 1 and sorted(hollow[0].get_offsets()[:, 0]) == a.estimated_starts
    assert tuple(hollow[0].get_facecolors()[0]) == (1.0, 1.0, 1.0, 1.0)
    assert any("estimate" in t.get_text() for t in ax.get_legend().get_texts())
    plt.close("all")
    for s in survivors: assert math.isclose(a.ppl_by_start[s], exact.ppl_by_start[s], rel_tol=1e-5)
    assert a.best_ppl <= exact.best_ppl * 1.005, (a.best_start, exact.best_start)
    assert a.stats["layer_passes"] < exact.stats["layer_passes"] and a.stats["possible_gap_rel"] >= 0
    full = approx_search(model, data, 1, keep_exact=len(exact.ppl_by_start), progress=False)  # nothing dropped: exact
    assert_same(full, exact, "approx keeping every window")
    assert full.estimated_starts == []
