"""The reference tutorial's code, run as a user would with depthprune_nb in place of Quark.

Only three things differ from the tutorial: the imports name our package, the model path is a
tiny local OPT (no Hub here), and the dataset call reads the local WikiText-2 copy via text_file.
"""
from pathlib import Path

import pytest

from conftest import WIKITEXT as TEXT


@pytest.mark.skipif(not TEXT.exists(), reason=f"WikiText-2 test text not found at {TEXT}")
def test_tutorial_code_runs_and_saved_model_reloads(tmp_path, capsys):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from depthprune_nb import Config, LayerImportancePruneConfig, ModelPruner, get_wikitext_dataset
    from depthprune_nb.testing import save_tiny_model

    model_path = str(save_tiny_model(tmp_path / "opt", family="opt", num_layers=6))  # changed: local tiny OPT

    # --- tutorial code, as written ---
    model = AutoModelForCausalLM.from_pretrained(model_path, device_map="auto", torch_dtype="auto", trust_remote_code=True)
    main_device = model.device
    eval_dataloader = get_wikitext_dataset(model_path, main_device, text_file=TEXT, seqlen=256, nsamples=16)  # changed: local text
    print(model)
    pruning_config = Config()
    pruning_config.algo_config = LayerImportancePruneConfig()
    pruning_config.algo_config.delete_layer_num = 2
    pruning_config.algo_config.model_decoder_layers = "model.decoder.layers"
    pruning_config.algo_config.layer_norm_field = "model.decoder.final_layer_norm"
    pruning_config.algo_config.layer_num_field = "num_hidden_layers"
    model_pruner = ModelPruner(pruning_config)
    param_num = sum(p.numel() for p in model.parameters())
    print(f"Before pruning, the model with: {param_num} parameters")
    model = model_pruner.pruning_model(model, eval_dataloader)
    print(model)
    param_num_after = sum(p.numel() for p in model.parameters())
    print(f"After pruning, the model with: {param_num_after} parameters")
    save_dir = tmp_path / "pruned"
    model.save_pretrained(save_dir, safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=True)
    tokenizer.save_pretrained(save_dir)
    # --- end of tutorial code ---

    out = capsys.readouterr().out
    assert f"Before pruning, the model with: {param_num} parameters" in out
    assert f"After pruning, the model with: {param_num_after} parameters" in out
    assert param_num_after < param_num
    assert model.config.num_hidden_layers == 4 and len(model.model.decoder.layers) == 4

    reloaded, info = AutoModelForCausalLM.from_pretrained(save_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert reloaded.config.num_hidden_layers == 4
    ids = eval_dataloader[0][:, :32]
    with torch.inference_mode():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=0, atol=0)
