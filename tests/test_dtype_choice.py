"""`compute_dtype="auto"` (the default): a low precision only where this device computes it faster.

The probe is forced to say "slow" or "fast" (its verdict on the real CPU depends on the machine), and the
size rule that keeps tiny models in float32 unprobed is switched off, so that the trained tiny Llama of the
engine tests is searched as a real model would be:
- forced "slow": the search runs in float32 and the result says so (and why);
- forced "fast": the table in bfloat16, the contenders confirmed in float32;
- an explicit bfloat16 on a slow device still runs, with a `SlowDtypeWarning` naming the slowdown;
- in every case the pick and its PPL are float32's.
GPUs are decided from their capability, mocked here (no GPU on the test machine)."""
import json, os, subprocess, sys, warnings

import pytest
import torch

from depthprune_nb.engine import dtype_choice as dc
from depthprune_nb.config import LayerImportancePruneConfig
from depthprune_nb import fast_search
from depthprune_nb.pruner import ModelPruner, layer_importance
from depthprune_nb.result import PruneResult
from test_engine import trained  # noqa: F401 -- the engine tests' fixture: a briefly trained tiny Llama

SMOLLM2 = dict(model_type="llama", num_hidden_layers=30, hidden_size=576, num_attention_heads=9, num_key_value_heads=3,
               intermediate_size=1536, vocab_size=49152, max_position_embeddings=8192, tie_word_embeddings=True)


def fake_probe(speedup):
    "A probe_speed stand-in that reports `speedup` (float32 time / low-precision time) for every dtype."
    def probe(shapes, device="cpu", low=torch.bfloat16):
        return dict(dtype=str(low)[6:], rows=64, shapes=[list(s) + [c] for s, c in shapes], float32_ms=5.0,
                    low_ms=5.0 / speedup, speedup=speedup, stopped_early=speedup < 1, wall_s=0.01, cached=False)
    return probe


@pytest.fixture
def probe_says(monkeypatch):
    "probe_says(speedup): force the probe's verdict; tiny layers are probed too."
    def force(speedup):
        monkeypatch.setattr(dc, "probe_speed", fake_probe(speedup))
        monkeypatch.setattr(dc, "SMALL_LAYER_MACS", 0)
    return force


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models run on one thread


def rel(a, b): return abs(a / b - 1)


@pytest.fixture(scope="module")
def exact(trained):
    "The float32 search every mode must agree with."
    model, data = trained
    return {n: fast_search(model, data, n, progress=False) for n in (1, 2)}


@pytest.mark.parametrize("n", [1, 2])
def test_slow_probe_searches_in_float32_and_says_so(trained, exact, probe_says, n):
    model, data = trained
    probe_says(1 / 30)  # bfloat16 emulated: 30x slower
    r = layer_importance(model, data, n, progress=False)  # compute_dtype="auto" is the default
    c = r.dtype_choice
    assert c["requested"] == "auto" and c["compute_dtype"] is None and c["table_dtype"] == "float32", c
    assert c["confirm_dtype"] is None and "0.033x float32's speed" in c["reason"] and c["probe"]["speedup"] < 1, c
    assert "compute_dtype" not in r.stats and r.low_precision_starts == []
    assert r.ppl_by_start == exact[n].ppl_by_start and r.deleted_layers == exact[n].deleted_layers
    assert r.baseline_ppl == exact[n].baseline_ppl
    assert "computed in float32 (compute_dtype='auto': this CPU" in str(r)


@pytest.mark.parametrize("n", [1, 2])
def test_fast_probe_searches_in_bfloat16_confirmed_in_float32(trained, exact, probe_says, n):
    model, data = trained
    probe_says(2.2)
    r = ModelPruner(LayerImportancePruneConfig(delete_layer_num=n), progress=False).search(model, data)  # config default: auto
    c = r.dtype_choice
    assert c["compute_dtype"] == "bfloat16" and c["table_dtype"] == "bfloat16" and c["confirm_dtype"] == "float32", c
    assert "2.20x float32's speed" in c["reason"], c
    assert r.stats["compute_dtype"] == "bfloat16" and r.stats["confirm"]["rescored"] and r.low_precision_starts
    assert r.deleted_layers == exact[n].deleted_layers, (r.deleted_layers, exact[n].deleted_layers)
    assert rel(r.best_ppl, exact[n].best_ppl) <= 1e-6 and rel(r.baseline_ppl, exact[n].baseline_ppl) <= 1e-6
    for s in set(r.ppl_by_start) - set(r.low_precision_starts):  # every confirmed row is float32's
        assert rel(r.ppl_by_start[s], exact[n].ppl_by_start[s]) <= 1e-6, s
    back = PruneResult.from_json(r.to_json())  # prune_result.json keeps the choice
    assert back.dtype_choice == json.loads(json.dumps(c))
    assert next(model.parameters()).dtype == torch.float32


def test_explicit_bfloat16_on_a_slow_device_warns_and_runs(trained, exact, probe_says):
    model, data = trained
    probe_says(1 / 40)
    with pytest.warns(dc.SlowDtypeWarning, match=r"compute_dtype='bfloat16' is 40x slower than float32.*compute_dtype='auto'"):
        r = layer_importance(model, data, 1, compute_dtype="bfloat16", progress=False)
    assert r.stats["compute_dtype"] == "bfloat16" and r.dtype_choice["requested"] == "bfloat16"  # it ran as asked
    assert r.deleted_layers == exact[1].deleted_layers and rel(r.best_ppl, exact[1].best_ppl) <= 1e-6
    probe_says(2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", dc.SlowDtypeWarning)  # a fast device: no warning
        layer_importance(model, data, 1, compute_dtype="bfloat16", progress=False)


def test_auto_keeps_the_models_own_dtype_where_a_low_precision_cannot_help(trained, probe_says, tmp_path):
    model, data = trained
    probe_says(3.0)  # bfloat16 fast, yet:
    from depthprune_nb.engine.checkpoint import SearchCheckpoint
    r = layer_importance(model, data, 1, progress=False, checkpoint=SearchCheckpoint(tmp_path / "ck"))
    assert r.dtype_choice["table_dtype"] == "float32" and "checkpoint" in r.dtype_choice["reason"]
    assert "compute_dtype" not in r.stats
    a = layer_importance(model, data, 1, method="angular", progress=False)
    assert a.dtype_choice is None and "compute_dtype" not in a.stats  # one forward pass: nothing to choose
    half = dc.choose_compute_dtype(model.to(torch.bfloat16))
    model.float()
    assert half.compute_dtype is None and half.table_dtype == "bfloat16" and "computes in bfloat16" in half.reason
    assert dc.choose_compute_dtype(model, None).compute_dtype is None


def test_tiny_layers_stay_in_float32_unprobed(trained, monkeypatch):
    model, _ = trained
    monkeypatch.setattr(dc, "probe_speed", lambda *a, **k: pytest.fail("a tiny model must not be probed"))
    c = dc.choose_compute_dtype(model)
    assert c.compute_dtype is None and "small" in c.reason and c.probe is None


@pytest.mark.parametrize("cc, bf16, rocm, want", [("9.0", True, False, "bfloat16"), ("8.0", True, False, "bfloat16"),
                                                  ("7.5", False, False, "float16"), ("6.1", False, False, None),
                                                  ("9.4", True, True, "bfloat16")])
def test_gpu_decision_from_capability(trained, monkeypatch, cc, bf16, rocm, want):
    model, _ = trained
    cap = dict(device="cuda:0", name="a GPU", compute_capability=cc, rocm=rocm, bfloat16_native=bf16)
    monkeypatch.setattr(dc, "device_capability", lambda dev: cap)
    monkeypatch.setattr(dc, "probe_speed", lambda *a, **k: pytest.fail("GPUs are decided from their capability"))
    c = dc.choose_compute_dtype(model)
    assert c.compute_dtype == want and c.table_dtype == (want or "float32") and c.confirm_dtype == ("float32" if want else None)
    assert f"compute capability {cc}" in c.reason


def test_plan_takes_the_choice_into_account(tmp_path, capsys, probe_says):
    from depthprune_nb.cli.prune import main
    (tmp_path / "config.json").write_text(json.dumps(dict(SMOLLM2, dtype="float32")))
    out = {}
    for speedup in (2.5, 0.1):
        probe_says(speedup)
        assert main(["--model_dir", str(tmp_path), "--plan", "--nsamples", "8", "--seqlen", "256", "--delete_layer_num", "2"]) == 0
        out[speedup] = capsys.readouterr().out
    assert "compute dtype auto -> bfloat16 table, float32 confirmation" in out[2.5] and "not counted: the float32 confirmation" in out[2.5]
    assert "compute dtype auto -> float32: " in out[0.1] and "not counted" not in out[0.1]
    from depthprune_nb.engine.plan import plan_search
    f32, mixed = (plan_search(SMOLLM2, 2, 8, 256, dtype_bytes=4, compute_dtype=d) for d in (None, "bfloat16"))
    assert mixed.compute_dtype == "bfloat16" and f32.compute_dtype is None
    assert mixed.activation_bytes < f32.activation_bytes and mixed.weight_bytes == f32.weight_bytes * 3 // 2


def test_cli_default_is_auto_and_recorded(tmp_path, wikitext):
    from depthprune_nb.testing import save_tiny_model
    model_dir = save_tiny_model(tmp_path / "m", family="llama", num_layers=4)
    from conftest import depthprune
    r = depthprune("--model_dir", model_dir, "--delete_layer_num", 1, "--text_file", wikitext, "--seqlen", 32,
                   "--nsamples", 4, "--quiet", "--save_dir", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    d = json.loads((tmp_path / "out" / "prune_result.json").read_text())
    assert d["dtype_choice"]["requested"] == "auto" and d["dtype_choice"]["table_dtype"] == "float32", d["dtype_choice"]
    assert "computed in float32 (compute_dtype='auto'" in r.stdout


def test_real_probe_is_short_and_cached():
    shapes = dc.config_shapes(SMOLLM2)
    dc._PROBES.pop(("cpu", shapes, "torch.bfloat16"), None)
    p = dc.probe_speed(shapes)
    assert p["wall_s"] < 2 and not p["cached"] and p["float32_ms"] > 0 and p["low_ms"] > 0, p  # well under a second, on a shared machine
    assert dc.probe_speed(shapes)["cached"]


def test_real_emulated_bfloat16_is_found_slow():
    "oneDNN limited to AVX2 (read when torch starts: a fresh process) emulates bfloat16: auto must pick float32."
    src = ("import json, torch; from depthprune_nb.engine.dtype_choice import *; c = choose_for_config(%r, device='cpu');"
           "print(json.dumps(c.to_dict()))" % SMOLLM2)
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    c = json.loads(r.stdout.splitlines()[-1])
    if c["capability"].get("onednn_bfloat16") is not False:
        pytest.skip(f"ONEDNN_MAX_CPU_ISA=AVX2 does not switch oneDNN's bfloat16 off here: {c['capability']}")
    assert c["compute_dtype"] is None and c["table_dtype"] == "float32" and c["probe"]["speedup"] < 1, c
