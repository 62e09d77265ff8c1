"`plan_search` and `depthprune --plan`: the cost from config.json alone, equal to what the engines count when they run."
import json, shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from depthprune_nb.plan import plan_search, model_shape, layer_flops, head_flops
from depthprune_nb.engine import fast_search
from depthprune_nb.search import reference_search
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
    from depthprune_nb import cli
    only = tmp_path / "only-config"; only.mkdir()
    shutil.copy(tiny[0] / "config.json", only / "config.json")
    monkeypatch.setattr(cli, "load_model", lambda *a, **k: pytest.fail("--plan loaded the model"))
    assert cli.main(["--model_dir", str(only), "--plan", "--delete_layer_num", "2", "--nsamples", "40",
                     "--seqlen", "64", "--tflops", "0.05", "--world_size", "2"]) == 0
    out = capsys.readouterr().out
    assert "20 per rank" in out and "layer passes" in out and "brute force" in out and "time at 0.05 TFLOP/s" in out
    assert cli.main(["--model_dir", str(only), "--plan", "--delete_layer_num", "5", "--nsamples", "4"]) == 2
    assert "delete_layer_num=5 is invalid for a model with 5 decoder layers" in capsys.readouterr().err
