"""Layer deletion on every family in `depthprune_nb.testing.FAMILIES`.

For each family and for an adjacent and a non-adjacent pair of layers, the pruned model must
(a) compute what the original model computes with those layers skipped,
(b) generate greedily the same with and without the KV cache, and
(c) save and reload with no missing or unexpected weights, giving the same logits and generations;
and `temporarily_deleted` must give the pruned model inside its block and the original, bit for bit, after.
"""
import re
import pytest, torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from depthprune_nb.config import ConfigError
from depthprune_nb.parts import FieldError, locate
from depthprune_nb.surgery import delete_layers, temporarily_deleted, SURGERY_RULES, Rule
from depthprune_nb.testing import FAMILIES, save_tiny_model

N_LAYERS = 6
PAIRS = {"adjacent": [1, 2], "apart": [1, 3]}  # alternating patterns hide stale per-layer lists from adjacent pairs
TEXT = ("The tower is 324 metres tall, about the same height as an 81-storey building. "
        "Its base is square, measuring 125 metres on each side.")
ATOL = 1e-5

@pytest.fixture(scope="session")
def checkpoint(family_checkpoint):
    "A saved tiny model per family with N_LAYERS layers, written once per session."
    return lambda family: family_checkpoint(family, N_LAYERS)

def load(path, **kw): return AutoModelForCausalLM.from_pretrained(path, **kw).eval()

def input_ids(path):
    ids = AutoTokenizer.from_pretrained(path)(TEXT, return_tensors="pt").input_ids
    assert ids.shape[1] > 16, "the prompt must be longer than the sliding windows (8) of the tiny models"
    return ids

def greedy(model, ids, use_cache):
    return model.generate(ids[:, :12], max_new_tokens=8, do_sample=False, use_cache=use_cache,
                          min_new_tokens=8).tolist()

@torch.no_grad()
def logits(model, ids): return model(ids, use_cache=False).logits

@torch.no_grad()
def logits_skipping(model, ids, skip):
    "Logits of the *unmodified* model with the layers in `skip` turned into pass-throughs."
    def passthrough(module, args, kwargs, output):
        h = args[0] if args else kwargs["hidden_states"]
        return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h
    layers = locate(model).layers
    handles = [layers[i].register_forward_hook(passthrough, with_kwargs=True) for i in skip]
    try: return logits(model, ids)
    finally:
        for h in handles: h.remove()

def assert_close(got, want, what):
    err = (got - want).abs().max().item()
    assert err <= ATOL, f"{what}: max |diff| = {err:.3g} > {ATOL}"

def _snapshot(model):
    cfg = model.config.to_dict()
    return cfg, {k: v.clone() for k, v in model.state_dict().items()}

def assert_restored(model, snapshot, layer_objs, what):
    cfg, state = _snapshot(model)
    assert cfg == snapshot[0], f"{what}: config not restored"
    assert state.keys() == snapshot[1].keys() and all(torch.equal(state[k], snapshot[1][k]) for k in state), \
        f"{what}: weights not restored"
    assert len(locate(model).layers) == len(layer_objs) and all(a is b for a, b in zip(locate(model).layers, layer_objs)), \
        f"{what}: layer list not restored"

@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_delete_layers(family, pair, checkpoint, tmp_path):
    path, skip = checkpoint(family), PAIRS[pair]
    what = f"{family} {skip}"
    model, ids = load(path), input_ids(path)
    full, expected = logits(model, ids), logits_skipping(model, ids, skip)
    assert (full - expected).abs().max() > 1e-3, "deleting layers should change the logits (test too weak?)"

    # temporarily: the pruned model inside the block, the original one bit for bit after it
    snapshot, layer_objs = _snapshot(model), list(locate(model).layers)
    with temporarily_deleted(model, skip) as m:
        assert locate(m).num_layers == N_LAYERS - 2
        inside = logits(m, ids)
    assert torch.equal(logits(model, ids), full), f"{what}: logits not restored bit for bit"
    assert_restored(model, snapshot, layer_objs, what)
    assert_close(inside, expected, f"{what}: logits inside temporarily_deleted vs original with layers skipped")

    assert delete_layers(model, skip) is model
    assert locate(model).num_layers == N_LAYERS - 2
    # (a) the pruned model computes the kept layers, exactly as the original model did
    pruned = logits(model, ids)
    assert_close(pruned, expected, f"{what}: pruned logits vs original with layers skipped")
    # (b) KV cache and no cache agree
    gen = greedy(model, ids, True)
    assert gen == greedy(model, ids, False), f"{what}: generate(use_cache=True) != use_cache=False"
    # (c) save -> reload: every weight found, nothing left over, same outputs
    model.save_pretrained(tmp_path)
    reloaded, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    reloaded.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], \
        f"{what}: reload loading info {info}"
    assert locate(reloaded).num_layers == N_LAYERS - 2
    assert_close(logits(reloaded, ids), pruned, f"{what}: reloaded logits vs pruned")
    assert greedy(reloaded, ids, True) == gen, f"{what}: reloaded generation differs"

@pytest.mark.parametrize("family", ["gemma3_text", "gpt2_scaled"])
def test_temporarily_deleted_restores_on_error(family, checkpoint):
    model = load(checkpoint(family))
    snapshot, layer_objs = _snapshot(model), list(locate(model).layers)
    with pytest.raises(RuntimeError, match="boom"):
        with temporarily_deleted(model, [0, 1]): raise RuntimeError("boom")
    assert_restored(model, snapshot, layer_objs, family)

@pytest.mark.parametrize("bad, msg", [
    ([6], "valid indices are 0..5"), ([-1], "out of range"), ([2, 2], "repeats layer(s) [2]"),
    (list(range(6)), "would delete all 6"), ([], "deletes nothing"), (["1"], "integer"), (2, "list of layer indices"),
])
def test_bad_layers_leave_model_untouched(bad, msg, checkpoint):
    model = load(checkpoint("qwen2"))
    snapshot, layer_objs = _snapshot(model), list(locate(model).layers)
    with pytest.raises(ConfigError, match=re.escape(msg)) as e: delete_layers(model, bad)
    assert "delete_layers_index" in str(e.value)
    assert_restored(model, snapshot, layer_objs, f"layers={bad!r}")

def test_count_field_must_agree(checkpoint):
    model = load(checkpoint("llama"))
    parts = locate(model)
    model.config.num_hidden_layers = 5
    with pytest.raises(FieldError, match="must agree"): delete_layers(model, [1], parts)
    assert len(model.model.layers) == N_LAYERS

def test_failure_while_applying_rolls_back(checkpoint, monkeypatch):
    "If an edit fails half-way through, the edits already made are undone."
    model = load(checkpoint("gemma2"))
    snapshot, layer_objs = _snapshot(model), list(locate(model).layers)
    class Boom:
        name = "boom"
        def apply(self): raise RuntimeError("boom")
        def undo(self): pass
    monkeypatch.setattr("depthprune_nb.surgery.SURGERY_RULES", SURGERY_RULES + [Rule("boom", lambda d: [Boom()], "test")])
    with pytest.raises(RuntimeError, match="boom"): delete_layers(model, [1, 3])
    assert_restored(model, snapshot, layer_objs, "gemma2 after a failed edit")
    assert [l.self_attn.layer_idx for l in model.model.layers] == list(range(N_LAYERS))

def test_moe_layout_follows_the_modules(checkpoint):
    "Qwen2-MoE layers 0 and 3 are dense; DeepSeek-V3 and GLM4-MoE layers 0 and 1; Llama4 odd layers are MoE."
    q = delete_layers(load(checkpoint("qwen2_moe")), [1, 2])      # kept old 0,3,4,5 -> dense at new 0,1
    assert (q.config.mlp_only_layers, q.config.decoder_sparse_step) == ([0, 1], 1)
    d = delete_layers(load(checkpoint("deepseek_v3")), [0, 3])    # kept old 1,2,4,5 -> one dense layer left
    assert d.config.first_k_dense_replace == 1
    g = delete_layers(load(checkpoint("glm4_moe")), [1, 3])
    assert g.config.first_k_dense_replace == 1 and g.config.num_mtp_layers == 0  # MTP weights are not in a pruned save
    l4 = delete_layers(load(checkpoint("llama4_text")), [1, 2])   # kept old 0,3,4,5 -> MoE at new 1,3
    assert l4.config.moe_layers == [1, 3]

@pytest.mark.parametrize("family, derived", [("qwen2", "layer_types"), ("qwen3", "layer_types"), ("dots1", "layer_types"),
                                             ("lfm2", "layer_types"), ("gpt_neo", "attention_layers")])
def test_layout_sources_agree(family, derived, checkpoint):
    "Per-layer lists that a config derives from a compact field (max_window_layers, full_attn_idxs, attention_types) re-derive the same."
    model = delete_layers(load(checkpoint(family)), [0, 1])  # every one of these layouts changes shape
    kw = model.config.to_dict()
    del kw[derived]
    rebuilt = type(model.config).from_dict(kw)
    assert getattr(rebuilt, derived) == getattr(model.config, derived), f"{family}: {derived} re-derived differently"

def test_layout_values(checkpoint):
    neo = delete_layers(load(checkpoint("gpt_neo")), [1, 3])      # global,local x3 -> kept g,g,g,l
    assert neo.config.attention_types == [[["global"], 3], [["local"], 1]]
    q2 = delete_layers(load(checkpoint("qwen2")), [1, 4])         # 3 full then 3 sliding -> 2 full, 2 sliding
    assert q2.config.max_window_layers == 2
    assert q2.config.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 2

def test_unknown_per_layer_list_is_sliced(checkpoint):
    "A config list with one entry per layer that no rule knows is sliced too (and logged)."
    model = load(checkpoint("llama"))
    model.config.my_layer_scales = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    delete_layers(model, [1, 3])
    assert model.config.my_layer_scales == [0.0, 0.2, 0.4, 0.5]

def _cpu_disk_map(n):
    dm = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    dm.update({f"model.layers.{i}": ("disk" if i >= n // 2 else "cpu") for i in range(n)})
    return dm

@pytest.mark.filterwarnings("ignore:Attempting to save a model with offloaded")
@pytest.mark.parametrize("device_map", ["auto", "cpu+disk", "disk"])
def test_device_map(device_map, checkpoint, tmp_path):
    "Models dispatched by accelerate (hooks on each layer, some or all weights offloaded to disk) survive deletion."
    path = checkpoint("llama")
    ids, skip = input_ids(path), [1, 4]
    want = logits(delete_layers(load(path), skip), ids)
    kw = dict(device_map="auto", offload_folder=str(tmp_path / "offload"))
    if device_map == "cpu+disk": kw["device_map"] = _cpu_disk_map(N_LAYERS)
    if device_map == "disk": kw["max_memory"] = {"cpu": 1000}
    model = load(path, **kw)
    delete_layers(model, skip)
    assert_close(logits(model, ids), want, f"device_map={device_map}: pruned logits")
    if device_map == "cpu+disk":
        assert "model.layers.4" not in model.hf_device_map and model.hf_device_map["model.layers.3"] == "disk"
    assert greedy(model, ids, True) == greedy(model, ids, False)
    model.save_pretrained(tmp_path / "saved")
    reloaded, info = AutoModelForCausalLM.from_pretrained(tmp_path / "saved", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert_close(logits(reloaded.eval(), ids), want, f"device_map={device_map}: reloaded logits")

def test_offloaded_gpt2_scaled_is_refused(checkpoint, tmp_path):
    "GPT-2's inverse-layer scaling is folded into weights, which cannot be done to offloaded ones: refuse, change nothing."
    model = load(checkpoint("gpt2_scaled"), device_map="auto", max_memory={"cpu": 1000}, offload_folder=str(tmp_path))
    with pytest.raises(ConfigError, match="offloaded"): delete_layers(model, [1, 2])
    assert model.config.n_layer == N_LAYERS and len(model.transformer.h) == N_LAYERS
