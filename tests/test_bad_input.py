"Bad input is refused before the search starts, with an error that names the value and what is valid; the model is untouched."
import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from depthprune_nb import Config, LayerImportancePruneConfig, ModelPruner
from depthprune_nb.config import ConfigError
from depthprune_nb.pruner import layer_importance
from depthprune_nb.testing import save_tiny_model


@pytest.fixture(scope="module")
def gemma2(tmp_path_factory):
    "A family with per-layer config lists (`layer_types`), 4 layers."
    path = save_tiny_model(tmp_path_factory.mktemp("m") / "g", family="gemma2", num_layers=4)
    return AutoModelForCausalLM.from_pretrained(path).eval()


def windows(model, n=3, T=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, model.config.vocab_size, (1, T), generator=g) for _ in range(n)]


def snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()}, model.config.to_dict(),
            [m.training for m in model.modules()], len(model.model.layers))


def assert_untouched(model, snap):
    sd, cfg, training, L = snap
    now = model.state_dict()
    assert sd.keys() == now.keys() and all(torch.equal(sd[k], now[k]) for k in sd), "weights changed"
    assert model.config.to_dict() == cfg, "config changed"
    assert [m.training for m in model.modules()] == training, "training flags changed"
    assert len(model.model.layers) == L, "layers changed"


def prune(model, data, n=1, **kw):
    return ModelPruner(Config(algo_config=LayerImportancePruneConfig(delete_layer_num=n)), progress=False, **kw).pruning_model(model, data)


def test_token_ids_outside_the_vocabulary(gemma2):
    V, snap = gemma2.get_input_embeddings().weight.shape[0], snapshot(gemma2)
    for bad, shown in ((V, V), (V + 7, V + 7), (-1, -1)):
        data = windows(gemma2)
        data[2][0, 5] = bad
        for engine in ("fast", "reference", "approx"):
            with pytest.raises(ConfigError, match=rf"data window 2 holds token id {shown}.*valid ids are 0\.\.{V - 1}"):
                prune(gemma2, data, engine=engine)
    assert_untouched(gemma2, snap)


def test_float_windows(gemma2):
    snap = snapshot(gemma2)
    data = windows(gemma2); data[1] = data[1].float()
    with pytest.raises(ConfigError, match=r"data window 1 has dtype torch.float32.*torch.long or torch.int32"):
        prune(gemma2, data)
    assert_untouched(gemma2, snap)


def test_windows_on_a_device_without_the_model(gemma2):
    snap = snapshot(gemma2)
    data = windows(gemma2); data[0] = data[0].to("meta")
    with pytest.raises(ConfigError, match=r"data window 0 is on device meta; valid: \['cpu'\]"):
        prune(gemma2, data)
    assert_untouched(gemma2, snap)


def test_model_in_training_mode_is_refused_and_left_in_training_mode(gemma2):
    gemma2.train()
    try:
        snap = snapshot(gemma2)
        for engine in ("fast", "reference"):
            with pytest.raises(ConfigError, match=r"training mode.*Call model.eval\(\) first"):
                prune(gemma2, windows(gemma2), engine=engine)
        assert_untouched(gemma2, snap)
        assert gemma2.training
    finally:
        gemma2.eval()


@pytest.mark.parametrize("n", [4, 5, 0, -1])
def test_delete_layer_num_that_leaves_no_layer(gemma2, n):
    snap = snapshot(gemma2)
    with pytest.raises(ConfigError, match=rf"delete_layer_num={n}.*" + ("between 1 and 3" if n >= 1 else ">= 1")):
        prune(gemma2, windows(gemma2), n=n)
    if n >= 1:
        with pytest.raises(ConfigError, match=rf"delete_layer_num={n} is invalid for a model with 4 decoder layers: it must be between 1 and 3"):
            layer_importance(gemma2, windows(gemma2), n, progress=False)
    assert_untouched(gemma2, snap)
    assert gemma2.config.layer_types == snap[1]["layer_types"] and len(gemma2.config.layer_types) == 4


def test_good_input_still_prunes(gemma2):
    model = copy.deepcopy(gemma2)
    data = windows(model); data[0] = data[0].int()
    prune(model, data, n=1)
    assert len(model.model.layers) == 3 and len(model.config.layer_types) == 3


def test_nan_losses_name_their_window_and_samples(tmp_path, caplog):
    "A NaN input-embedding row poisons the samples that use its token: the warning names them; the search then fails clearly."
    from depthprune_nb import fast_search
    model = AutoModelForCausalLM.from_pretrained(save_tiny_model(tmp_path / "l", family="llama", num_layers=4)).eval()
    assert not model.config.tie_word_embeddings  # a tied head would make every sample's loss NaN
    V = model.get_input_embeddings().weight.shape[0]
    with torch.no_grad(): model.get_input_embeddings().weight[V - 1] = float("nan")
    data = [d.clamp(max=V - 2) for d in windows(model, n=5)]
    for i in (1, 3): data[i][0, 4] = V - 1
    snap = snapshot(model)
    with caplog.at_level("WARNING", logger="depthprune_nb"), \
         pytest.raises(RuntimeError, match="every candidate window gave a non-finite perplexity"):
        fast_search(model, data, 1, progress=False)
    msgs = [r.getMessage() for r in caplog.records if "non-finite loss" in r.getMessage()]
    assert any("the unpruned model on 2 sample(s) [1, 3]" in m for m in msgs), msgs
    assert any("window start 2 (layers 2..2 deleted) on 2 sample(s) [1, 3]" in m for m in msgs), msgs
    sd, cfg, training, L = snap
    assert all(torch.equal(v, sd[k]) or torch.isnan(v).any() for k, v in model.state_dict().items()) and len(model.model.layers) == L


def test_out_of_memory_is_retried_with_smaller_chunks(gemma2, monkeypatch, caplog):
    "A simulated accelerator OOM on chunks over 2 samples: the chunk is split, the table is unchanged, the user is told."
    from depthprune_nb import fast_search
    from depthprune_nb.engine import sweeps
    data = windows(gemma2, n=7)
    whole = fast_search(gemma2, data, 1, chunk_size=7, progress=False)
    sweep, sizes = sweeps.Engine.sweep, []
    def tight(self, idx, *a, **kw):
        sizes.append(len(idx))
        if len(idx) > 2: raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return sweep(self, idx, *a, **kw)
    monkeypatch.setattr(sweeps.Engine, "sweep", tight)
    with caplog.at_level("WARNING", logger="depthprune_nb"):
        res = fast_search(gemma2, data, 1, chunk_size=7, progress=False)
    assert sizes == [7, 4, 2, 2, 2, 1], sizes        # 7 fails, 4 fails, then pieces of 2 (and the odd one)
    assert res.stats["oom_retries"] == 2 and any("retrying in chunks of 2" in r.getMessage() for r in caplog.records)
    for s, v in whole.ppl_by_start.items(): assert abs(res.ppl_by_start[s] / v - 1) < 1e-6
    assert abs(res.baseline_ppl / whole.baseline_ppl - 1) < 1e-6 and res.deleted_layers == whole.deleted_layers
    for s, v in whole.proxy_by_start.items(): assert abs(res.proxy_by_start[s] - v) < 1e-6   # no half-counted proxy
    def none_fit(self, idx, *a, **kw): raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
    monkeypatch.setattr(sweeps.Engine, "sweep", none_fit)
    with pytest.raises(torch.OutOfMemoryError, match="with a single sample of 16 tokens: use shorter windows"):
        fast_search(gemma2, data, 1, chunk_size=2, progress=False)
