"`plan_search` and `depthprune --plan`: the cost from config.json alone, equal to what the engines count when they run."
import json, shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from depthprune_nb.engine.plan import plan_search
from depthprune_nb.engine.shape import model_shape, layer_flops, head_flops
from depthprune_nb import fast_search
from depthprune_nb.engine.reference import reference_search
from depthprune_nb.testing import save_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = save_tiny_model(tmp_path_factory.mktemp("m") / "q", family="qwen2_moe", num_layers=5)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    data = [torch.randint(0, model.config.vocab_size, (1, 24), generator=torch.Generator().manual_seed(i)) for i in range(5)]
    return path, model, data


@pytest.mark.parametrize("engine", ["fast", "reference"])
@pytest.mark.parametrize("n", [1, 3])
def test_passes_equal_the_engines_counts(tiny, engine, n):
    path, model, data = tiny
    st = (fast_search if engine == "fast" else reference_search)(model, data, n, progress=False).stats
    p = plan_search(path, n, len(data), 24, engine=engine)
    assert (p.layer_passes, p.head_passes) == (st["layer_passes"], st["head_passes"])


def test_mix_mode_weight_moves(tiny):
    path, model, data = tiny
    st = fast_search(model, data, 2, save_gpu_memory=True, device="cpu", chunk_size=2, progress=False).stats
    assert plan_search(path, 2, len(data), 24, save_gpu_memory=True, chunk_size=2).weight_moves == st["weight_moves"] - st["setup_weight_moves"]


def test_moe_counts_active_experts_only(tiny):
    s = model_shape(tiny[0])
    assert (s.experts, s.experts_per_tok, s.moe_layers) == (4, 2, 3)  # layers 0 and 3 are dense
    dense = dict(json.loads((tiny[0] / "config.json").read_text()), num_experts=0)
    assert layer_flops(s, 24) < layer_flops(model_shape(dict(dense, intermediate_size=4 * 32 * 3)), 24)


def test_flops_grow_with_seqlen_squared_in_attention_only():
    cfg = dict(model_type="llama", num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128, vocab_size=100)
    s = model_shape(cfg)
    per_token = lambda T: layer_flops(s, T) / T
    assert per_token(2048) - per_token(1024) == pytest.approx(2 * 4 * 16 * 1024)
    assert head_flops(s, 2048) == 2 * head_flops(s, 1024)


def test_world_size_splits_the_samples():
    cfg = dict(model_type="llama", num_hidden_layers=8, hidden_size=64, num_attention_heads=4, intermediate_size=128, vocab_size=100)
    one, four = plan_search(cfg, 2, 64, 128, tflops=1), plan_search(cfg, 2, 64, 128, world_size=4, tflops=1)
    assert four.layer_passes * 4 == one.layer_passes and four.est_s == pytest.approx(one.est_s / 4)


def test_cli_plan_reads_config_json_alone(tiny, tmp_path, capsys, monkeypatch):
    from depthprune_nb.cli import prune as cli
    only = tmp_path / "only-config"; only.mkdir()
    shutil.copy(tiny[0] / "config.json", only / "config.json")
    monkeypatch.setattr(cli, "load_model", lambda *a, **k: pytest.fail("--plan loaded the model"))
    assert cli.main(["--model_dir", str(only), "--plan", "--delete_layer_num", "2", "--nsamples", "40",
                     "--seqlen", "64", "--tflops", "0.05", "--world_size", "2"]) == 0
    out = capsys.readouterr().out
    assert "20 per rank" in out and "layer passes" in out and "brute force" in out and "time at 0.05 TFLOP/s" in out
    assert cli.main(["--model_dir", str(only), "--plan", "--delete_layer_num", "5", "--nsamples", "4"]) == 2
    assert "delete_layer_num=5 is invalid for a model with 5 decoder layers" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["angular", "angular_all", "block_influence", "sleb"])
@pytest.mark.parametrize("n", [1, 3])
def test_every_criterion_passes_equal_its_run(tiny, method, n):
    from depthprune_nb.pruner import layer_importance
    path, model, data = tiny
    st = layer_importance(model, data, n, method=method, progress=False).stats
    p = plan_search(path, n, len(data), 24, method=method)
    assert (p.layer_passes, p.head_passes) == (st["layer_passes"], st["head_passes"])
    assert (p.report_layer_passes, p.report_head_passes) == (st.get("report_layer_passes", 0), st.get("report_head_passes", 0))


def test_sleb_brute_force_is_its_rounds_with_the_reference_engine(tiny):
    from depthprune_nb.pruner import layer_importance
    path, model, data = tiny
    st = layer_importance(model, data, 2, method="sleb", engine="reference", progress=False).stats
    p = plan_search(path, 2, len(data), 24, method="sleb")
    assert (p.brute_force_layer_passes, p.brute_force_head_passes) == (st["layer_passes"], st["head_passes"])


def test_one_pass_criteria_are_not_shared_over_ranks_and_sleb_is():
    cfg = dict(model_type="llama", num_hidden_layers=8, hidden_size=64, num_attention_heads=4, intermediate_size=128, vocab_size=100)
    bi1, bi4 = (plan_search(cfg, 2, 64, 128, world_size=w, method="block_influence") for w in (1, 4))
    assert bi4.layer_passes == bi1.layer_passes and any("each rank runs all 64" in x for x in bi4.notes)
    s1, s4 = (plan_search(cfg, 2, 64, 128, world_size=w, method="sleb") for w in (1, 4))
    assert s4.layer_passes * 4 == s1.layer_passes
    with pytest.raises(ValueError, match="valid methods"): plan_search(cfg, 2, 64, 128, method="magic")


def test_cli_plan_follows_method(tiny, tmp_path, capsys):
    from depthprune_nb.cli import prune as cli
    only = tmp_path / "only-config"; only.mkdir()
    shutil.copy(tiny[0] / "config.json", only / "config.json")
    assert cli.main(["--model_dir", str(only), "--plan", "--delete_layer_num", "2", "--nsamples", "8", "--seqlen", "32",
                     "--method", "sleb"]) == 0
    out = capsys.readouterr().out
    assert "delete 2 by sleb" in out and "2 rounds" in out


@pytest.mark.parametrize("n", [1, 2])
def test_repair_aware_passes_equal_the_search_counts(tmp_path, n):
    "The repair-aware table's passes (fits, plain and repaired sweeps) as the plan counts them, less the pick's final refit and PPLs."
    from depthprune_nb.recover.aware import repair_aware_search
    from depthprune_nb.engine.plan import repair_passes
    path = save_tiny_model(tmp_path / "l", family="llama", num_layers=6)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    data = [torch.randint(0, model.config.vocab_size, (1, 24), generator=torch.Generator().manual_seed(i)) for i in range(7)]
    st = repair_aware_search(model, data[:5], n, score_data=data[5:], progress=False).stats
    p = plan_search(path, n, len(data), 24, repair="linear", repair_score_windows=2)
    L, fit = 6, 5
    final = dict(layer_passes=fit * L + 2 * fit * (L - n), head_passes=2 * fit)
    assert p.layer_passes + p.repair_layer_passes - final["layer_passes"] == st["layer_passes"]
    assert p.head_passes + p.repair_head_passes - final["head_passes"] == st["head_passes"]
    assert repair_passes(L, n, 7, 2)["maps"] == len(st["repaired_ppl_by_start"])
    assert p.normal_equations_bytes == len(st["repaired_ppl_by_start"]) * 2 * model.config.hidden_size ** 2 * 8


def test_cli_plan_counts_the_repair(tiny, capsys):
    from depthprune_nb.cli import prune as cli
    path = tiny[0]
    cli.main([f"--model_dir={path}", "--plan", "--nsamples=6", "--seqlen=24", "--delete_layer_num=1", "--repair=linear",
              "--repair_score_windows=2"])
    out = capsys.readouterr().out
    assert "+ repair layer passes" in out and "fitted at once on 4 windows" in out
