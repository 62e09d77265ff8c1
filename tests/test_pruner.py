"ModelPruner's promises: the model is untouched unless pruning succeeds, and results are honest."
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from depthprune_nb import (ConfigError, LayerImportancePruneConfig, ModelPruner, PruneResult, layer_importance,
                           perplexity)
from depthprune_nb.testing import save_tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("m") / "llama", family="llama", num_layers=5)


def windows(vocab, n=3, seqlen=32):
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, vocab, (1, seqlen), generator=g) for _ in range(n)]


def snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()}, model.config.to_dict(),
            [type(l).__name__ for l in model.model.layers])


def assert_unchanged(model, snap):
    sd, cfg, kinds = snap
    assert model.config.to_dict() == cfg
    assert [type(l).__name__ for l in model.model.layers] == kinds
    now = model.state_dict()
    assert now.keys() == sd.keys() and all(torch.equal(now[k], v) for k, v in sd.items())


@pytest.mark.parametrize("engine", ["fast", "reference"])
@pytest.mark.parametrize("fail_at", [1, 4, 7])  # the fast engine runs 7 head passes here, the reference 15
def test_a_search_that_fails_half_way_leaves_the_model_untouched(model_dir, engine, fail_at):
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    data = windows(model.config.vocab_size)
    snap = snapshot(model)
    calls = []
    def boom(module, args):  # the final norm runs once per head pass: fail on the `fail_at`-th
        calls.append(1)
        if len(calls) == fail_at: raise RuntimeError("simulated failure")
    handle = model.model.norm.register_forward_pre_hook(boom)
    one_head = dict(head_batch=1) if engine == "fast" else {}  # one stream per head call: a norm call per head pass
    try:
        with pytest.raises(RuntimeError, match="simulated failure"):
            ModelPruner(LayerImportancePruneConfig(delete_layer_num=2), engine=engine, progress=False,
                        **one_head).pruning_model(model, data)
    finally: handle.remove()
    assert len(calls) == fail_at
    assert_unchanged(model, snap)
    assert not model.model.norm._forward_pre_hooks
    assert all(not l._forward_pre_hooks and not l._forward_hooks and "forward" not in l.__dict__ for l in model.model.layers)
    ModelPruner(LayerImportancePruneConfig(delete_layer_num=2), engine=engine, progress=False).pruning_model(model, data)
    assert model.config.num_hidden_layers == 3


def test_fast_and_reference_engines_agree_through_the_pruner(model_dir):
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    data = windows(model.config.vocab_size)
    fast = layer_importance(model, data, 2, progress=False)
    ref = layer_importance(model, data, 2, engine="reference", progress=False)
    assert fast.deleted_layers == ref.deleted_layers
    for s, v in ref.ppl_by_start.items(): assert math.isclose(fast.ppl_by_start[s], v, rel_tol=1e-5)


def test_bf16_model_loss_is_computed_in_float32(model_dir):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    data = windows(model.config.vocab_size)
    ours = perplexity(model, data)
    with torch.inference_mode():
        nll = [torch.nn.functional.cross_entropy(model(d).logits[0, :-1].float(), d[0, 1:]).item() for d in data]
    assert math.isclose(ours, math.exp(sum(nll) / len(nll)), rel_tol=1e-6)


def test_result_round_trips_and_reports_what_happened(model_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    before = sum(p.numel() for p in model.parameters())
    pruner = ModelPruner(LayerImportancePruneConfig(delete_layer_num=2), progress=False)
    pruner.pruning_model(model, windows(model.config.vocab_size))
    r = pruner.result
    assert r.params_before == before and r.params_after == sum(p.numel() for p in model.parameters())
    assert (r.num_layers_before, r.num_layers_after) == (5, 3) and len(r.ppl_by_start) == 4
    assert r.best_ppl == min(r.ppl_by_start.values())
    r.to_json(tmp_path / "r.json")
    assert PruneResult.from_json(tmp_path / "r.json") == r
    assert "<- best" in str(r)


def test_unknown_engine_is_named():
    with pytest.raises(ConfigError, match="engine='turbo'"):
        ModelPruner(LayerImportancePruneConfig(), engine="turbo")
