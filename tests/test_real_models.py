"""Every real model of `depthprune_nb.io.registry.MODELS`, pruned for real: the exact engine equals brute force, the pruned
model saves, reloads and generates identically, Gemma-3's kept layers keep their own attention kind, and the pruned GGUF
holds the kept blocks. Each model runs where its chunk packages are installed (CI installs Gemma-3 and the Qwen-0.5B);
the 1.5B and the command-line runs only with DEPTHPRUNE_BIG=1 (minutes each on a 2-core CPU)."""
import importlib.metadata, json, os
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import depthprune
from depthprune_nb.io.models import gguf_path, load_real_model
from depthprune_nb.io.registry import MODELS, install_command

BIG = os.environ.get("DEPTHPRUNE_BIG") == "1"
big = pytest.mark.skipif(not BIG, reason="minutes on a CPU: set DEPTHPRUNE_BIG=1")


def needs(name:str):
    try: [importlib.metadata.distribution(p) for p in MODELS[name].packages]
    except importlib.metadata.PackageNotFoundError: pytest.skip(f"{name} is not installed: {install_command(name)}")


def attention_kinds(model)->list:
    "Per decoder layer: its entry in config.layer_types and its attention module's sliding window (None: full attention)."
    return [(model.config.layer_types[i], layer.self_attn.sliding_window, layer.self_attn.is_sliding)
            for i, layer in enumerate(model.model.layers)]


def logits_and_generation(model, ids):
    with torch.no_grad():
        return model(ids).logits, model.generate(ids, max_new_tokens=6, do_sample=False)


@pytest.mark.parametrize("name", [n if n != "qwen2.5-coder-1.5b-instruct" else pytest.param(n, marks=big) for n in MODELS])
def test_real_model_exact_search_save_and_gguf(name, tmp_path, wikitext):
    needs(name)
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM
    from depthprune_nb import layer_importance, delete_layers
    from depthprune_nb.data import get_wikitext_dataset
    from depthprune_nb.io.gguf import gguf_config, gguf_source, read_gguf, write_pruned_gguf, swa_layer_pattern
    from depthprune_nb.pruner import save_pruned
    model, tok = load_real_model(name)
    L = model.config.num_hidden_layers
    assert L == MODELS[name].layers
    data = get_wikitext_dataset(None, seqlen=24, text_file=wikitext, tokenizer=tok, nsamples=2, progress=False)

    ref = layer_importance(model, data, 2, engine="reference", progress=False)
    fast = layer_importance(model, data, 2, engine="fast", progress=False)
    assert sorted(fast.ppl_by_start) == sorted(ref.ppl_by_start) == list(range(L - 1))
    worst = max(abs(fast.ppl_by_start[s] / v - 1) for s, v in ref.ppl_by_start.items())
    assert worst <= 1e-4, f"{name}: exact table differs from brute force by {worst:.2e} (rel)"
    assert fast.deleted_layers == ref.deleted_layers
    print(f"\n{name}: exact vs brute force, largest rel. difference {worst:.1e}; pick {ref.deleted_layers} "
          f"(PPL {ref.best_ppl:.2f} on 2 windows of 24 tokens)")

    deleted = ref.deleted_layers
    kept = [i for i in range(L) if i not in deleted]
    gemma = model.config.model_type == "gemma3_text"
    if gemma: kinds = attention_kinds(model)
    delete_layers(model, deleted)
    if gemma: assert attention_kinds(model) == [kinds[i] for i in kept]
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    want_logits, want_gen = logits_and_generation(model, ids)

    out = save_pruned(model, tmp_path / "pruned", tok)
    back, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    back.eval()
    got_logits, got_gen = logits_and_generation(back, ids)
    torch.testing.assert_close(got_logits, want_logits, rtol=0, atol=0)
    assert torch.equal(got_gen, want_gen)
    if gemma: assert attention_kinds(back) == [kinds[i] for i in kept]

    # the pruned GGUF: the kept blocks' bytes, and (gemma3) their own sliding-window flags, read as llama.cpp and our loader read them
    src = Path(gguf_source(model))
    g = write_pruned_gguf(src, tmp_path / "pruned.gguf", deleted, model=model)
    r0, r1 = read_gguf(src), read_gguf(g)
    arch = MODELS[name].architecture
    assert r1.get_field(f"{arch}.block_count").contents() == L - 2
    t0 = {t.name: t for t in r0.tensors}
    for t in r1.tensors:
        old = t.name if not t.name.startswith("blk.") else f"blk.{kept[int(t.name.split('.')[1])]}." + t.name.split(".", 2)[2]
        assert np.array_equal(t.data, t0[old].data), t.name
    if gemma:
        flags = swa_layer_pattern(r1, arch, L - 2)
        assert flags == [kinds[i][0] == "sliding_attention" for i in kept]
        assert gguf_config(g.parent, g.name, r1).layer_types == [kinds[i][0] for i in kept]
        # and a second deletion that moves full-attention layer 5 to index 3, where the period of 6 would make it sliding
        delete_layers(back, [1, 2])
        kept2 = [kept[i] for i in range(L - 2) if i not in (1, 2)]
        assert attention_kinds(back) == [kinds[i] for i in kept2] and kept2.index(5) == 3


@big
@pytest.mark.parametrize("name", list(MODELS))
def test_cli_prunes_each_real_model(name, tmp_path, wikitext):
    needs(name)
    path = gguf_path(name)
    r = depthprune("--model_dir", path, "--text_file", wikitext, "--delete_layer_num", 2, "--seqlen", 24, "--nsamples", 2,
                   "--save_dir", tmp_path / "pruned", "--save_gguf", tmp_path / "pruned.gguf", "--quiet", timeout=3600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "pruned" / "prune_result.json").read_text())
    assert len(res["deleted_layers"]) == 2 and (tmp_path / "pruned.gguf").stat().st_size < path.stat().st_size
