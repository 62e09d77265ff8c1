"""`method="kl"` (issue 25): every window's mean KL(unpruned || pruned) of the next-token distributions, over the
positions the perplexity scores, from the exact engine. Checked against a brute force written here (delete the window
with `temporarily_deleted`, run the model, KL in float64 against the unpruned model's distributions): rel 1e-5 and
the same pick on tiny models of three families and on SmolLM2-135M windows of WikiText; resume gives the same table;
`layer_importance`, `ModelPruner`, the command line and `plan_search` know the criterion."""
import json, math

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import depthprune
from depthprune_nb import ModelPruner, layer_importance
from depthprune_nb.config import ConfigError, LayerImportancePruneConfig
from depthprune_nb.engine.checkpoint import SearchCheckpoint
from depthprune_nb.engine.exact import fast_search
from depthprune_nb.engine.kl import kl_search
from depthprune_nb.engine.plan import plan_search
from depthprune_nb.parts import locate
from depthprune_nb.result import PruneResult
from depthprune_nb.surgery import temporarily_deleted

L, SEQLEN, NSAMPLES = 5, 16, 3
FAMILIES3 = ["llama", "gemma3_text", "falcon"]  # RMSNorm + RoPE; hybrid sliding attention + soft-capped logits; tuple-returning layers

pytestmark = pytest.mark.usefixtures("one_thread")


def windows(model, k=NSAMPLES, seqlen=SEQLEN, seed=0, bos=None):
    "Random windows; with `bos`, each led by that token as the data's BOS rule leads them."
    g = torch.Generator().manual_seed(seed)
    ws = [torch.randint(0, model.config.vocab_size, (1, seqlen), generator=g) for _ in range(k)]
    if bos is not None:
        for w in ws: w[0, 0] = bos
    return ws


@torch.no_grad()
def brute_force(model, data, n):
    "(KL per start, PPL per start, baseline PPL): each window deleted for real; KL of the positions 0..T-2 in float64."
    parts = locate(model)
    def logp(ids): return model(ids, use_cache=False).logits[0, :-1].double().log_softmax(-1)
    base = [logp(ids) for ids in data]
    def nll(lp, ids): return -lp.gather(-1, ids[0, 1:, None]).mean().item()
    kl, ppl = {}, {}
    for s in range(parts.num_layers - n + 1):
        with temporarily_deleted(model, list(range(s, s + n)), parts):
            q = [logp(ids) for ids in data]
        kl[s] = sum((p.exp() * (p - lq)).sum(-1).mean().item() for p, lq in zip(base, q)) / len(data)
        ppl[s] = math.exp(sum(nll(lq, ids) for lq, ids in zip(q, data)) / len(data))
    return kl, ppl, math.exp(sum(nll(p, ids) for p, ids in zip(base, data)) / len(data))


def pick(table): return min(sorted(table), key=table.get)


def assert_matches(r, kl, ppl, base, what, tol=1e-5):
    assert r.method == "kl" and sorted(r.kl_by_start) == sorted(kl), what
    worst = max(abs(r.kl_by_start[s] / v - 1) for s, v in kl.items())
    assert worst <= tol, f"{what}: KL differs from brute force by {worst:.2e} (rel): {r.kl_by_start} vs {kl}"
    worst_ppl = max(abs(r.ppl_by_start[s] / v - 1) for s, v in ppl.items())
    assert worst_ppl <= tol, f"{what}: PPL differs from brute force by {worst_ppl:.2e} (rel)"
    assert math.isclose(r.baseline_ppl, base, rel_tol=tol), f"{what}: baseline {r.baseline_ppl} vs {base}"
    assert r.best_start == pick(kl), f"{what}: picked {r.best_start}, brute force {pick(kl)} ({kl})"
    assert min(kl.values()) > 0, f"{what}: a deleted window must change the distributions"


@pytest.fixture(scope="module")
def tiny(family_checkpoint):
    return lambda family: AutoModelForCausalLM.from_pretrained(family_checkpoint(family, L)).eval()


@pytest.mark.parametrize("family", FAMILIES3)
def test_kl_equals_brute_force(family, tiny):
    model = tiny(family)
    bos = getattr(model.config, "bos_token_id", None)
    data = windows(model, bos=bos if isinstance(bos, int) and bos < model.config.vocab_size else None)
    for n in (1, 2):
        kl, ppl, base = brute_force(model, data, n)
        variants = {"default": {}, "chunks of 2 (do not divide 3)": dict(chunk_size=2),
                    "1-byte budget: one position, one window per head call": dict(memory_budget=1, chunk_size=1),
                    "mix mode, streams batched": dict(save_gpu_memory=True, device="cpu", call_tokens=10**6)}
        for name, kw in variants.items():
            r = kl_search(model, data, n, progress=False, **kw)
            assert_matches(r, kl, ppl, base, f"{family} n={n} {name}")
        assert r.stats["layer_passes"] == NSAMPLES * (L + (L - n) * (L - n + 1) // 2), r.stats  # the exact search's prefix reuse
        assert r.stats["head_passes"] == NSAMPLES * (L - n + 2), r.stats                         # unpruned head once per sample
        ppl_search = fast_search(model, data, n, progress=False)                                   # the PPL column is the PPL search's table
        assert all(math.isclose(r.ppl_by_start[s], v, rel_tol=1e-5) for s, v in ppl_search.ppl_by_start.items())
        ref = layer_importance(model, data, n, method="kl", engine="reference", progress=False)
        assert_matches(ref, kl, ppl, base, f"{family} n={n} engine='reference'")


def test_same_table_after_resume(tiny, tmp_path):
    model = tiny("llama")
    data = windows(model, k=6)
    class Crash(Exception): pass
    class CrashAfter(SearchCheckpoint):
        def save(self, done, *args, **kw):
            super().save(done, *args, **kw)
            if done == 2: raise Crash
    once = kl_search(model, data, 2, chunk_size=2, progress=False)
    with pytest.raises(Crash): kl_search(model, data, 2, chunk_size=2, checkpoint=CrashAfter(tmp_path), progress=False)
    saved = json.loads((tmp_path / "search_state.json").read_text())["payload"]["state"]
    assert saved["chunks_done"] == 2 and all(len(v) == 4 for v in saved["kls"].values()), saved
    resumed = kl_search(model, data, 2, chunk_size=2, checkpoint=SearchCheckpoint(tmp_path, resume=True), progress=False)
    assert resumed.kl_by_start == once.kl_by_start and resumed.ppl_by_start == once.ppl_by_start
    assert resumed.deleted_layers == once.deleted_layers and resumed.baseline_ppl == once.baseline_ppl
    assert str(resumed) == str(once)
    with pytest.raises(ConfigError, match="engine, n|engine"):  # a KL checkpoint is not a PPL search's, nor the reverse
        fast_search(model, data, 2, chunk_size=2, checkpoint=SearchCheckpoint(tmp_path, resume=True), progress=False)


def test_result_table_json_and_pruner(tiny, tmp_path):
    model = tiny("llama")
    data = windows(model)
    r = layer_importance(model, data, 2, method="kl", progress=False)
    text = str(r)
    assert "KL" in text.splitlines()[1] and "method: kl" in text
    for s, v in r.kl_by_start.items():   # every window's row shows its PPL and its KL
        row = next(l for l in text.splitlines()[2:] if l.split()[0] == str(s))
        assert f"{v:.6f}" in row, row
    assert PruneResult.from_json(r.to_json()) == r
    assert r.runner_up_layers is not None and r.kl_by_start[r.runner_up_layers[0]] >= r.kl_by_start[r.best_start]
    pruner = ModelPruner(LayerImportancePruneConfig(delete_layer_num=2, method="kl"), progress=False)
    pruned = pruner.pruning_model(model, data)
    assert pruner.result.method == "kl" and pruner.result.deleted_layers == r.deleted_layers
    assert locate(pruned).num_layers == L - 2
    for bad, msg in [(dict(engine="approx"), "computed exactly"), (dict(early_abort=True), "early_abort"),
                     (dict(head_bound=True), "needs every"), (dict(compute_dtype="bfloat16"), "model's own dtype")]:
        with pytest.raises(ConfigError, match=msg): layer_importance(tiny("llama"), data, 2, method="kl", progress=False, **bad)


def test_plan_counts_the_kl_search():
    cfg = dict(model_type="gemma3_text", num_hidden_layers=18, hidden_size=640, num_attention_heads=4, num_key_value_heads=1,
               head_dim=256, intermediate_size=2048, vocab_size=262144, tie_word_embeddings=True)
    ppl, kl = (plan_search(cfg, 2, 64, 2048, method=m, dtype_bytes=4) for m in ("ppl_window", "kl"))
    assert (kl.layer_passes, kl.head_passes) == (ppl.layer_passes, ppl.head_passes)
    assert kl.flops > ppl.flops and kl.method == "kl" and any(n.startswith("kl:") for n in kl.notes)
    assert kl.activation_bytes - ppl.activation_bytes <= (1 << 30)   # the logits cap holds the KL head's extra copies
    with pytest.raises(ConfigError, match="computed exactly"): plan_search(cfg, 2, 64, 2048, method="kl", engine="approx")


def test_command_line(tiny, family_checkpoint, tmp_path, wikitext):
    out = tmp_path / "r.json"
    r = depthprune("--model_dir", family_checkpoint("llama", L), "--text_file", wikitext, "--delete_layer_num", 2,
                   "--method", "kl", "--nsamples", 3, "--seqlen", 32, "--eval_nsamples", 0, "--result_json", out,
                   "--checkpoint_dir", tmp_path / "ck", "--quiet")
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["method"] == "kl" and len(res["kl_by_start"]) == len(res["ppl_by_start"]) == L - 1
    assert res["deleted_layers"][0] == pick({int(k): v for k, v in res["kl_by_start"].items()})
    assert "method: kl" in r.stdout and (tmp_path / "ck" / "search_state.json").exists()
    p = depthprune("--model_dir", family_checkpoint("llama", L), "--method", "kl", "--nsamples", 8, "--seqlen", 64, "--plan")
    assert p.returncode == 0 and "by kl" in p.stdout, p.stderr


def test_smollm2_windows_match_brute_force(wikitext):
    "SmolLM2-135M-Instruct, three 128-token WikiText windows, n = 2: the exact KL table is the brute force's, same pick."
    import importlib.metadata
    from depthprune_nb.io.models import load_real_model
    from depthprune_nb.io.registry import MODELS, install_command
    from depthprune_nb.data import get_wikitext_dataset
    try: [importlib.metadata.distribution(p) for p in MODELS["smollm2-135m-instruct"].packages]
    except importlib.metadata.PackageNotFoundError: pytest.skip(f"not installed: {install_command('smollm2-135m-instruct')}")
    model, tok = load_real_model("smollm2-135m-instruct")
    data = get_wikitext_dataset(None, seqlen=128, text_file=wikitext, tokenizer=tok, nsamples=3, progress=False)
    kl, ppl, base = brute_force(model, data, 2)
    r = kl_search(model, data, 2, progress=False)
    assert_matches(r, kl, ppl, base, "smollm2 n=2")
    print(f"\nsmollm2: KL pick {r.deleted_layers} (KL {r.kl_by_start[r.best_start]:.4f}), PPL pick "
          f"{pick(ppl)}; largest rel. KL difference {max(abs(r.kl_by_start[s] / v - 1) for s, v in kl.items()):.1e}")


def test_two_processes_give_the_one_process_kl_table(family_checkpoint, tmp_path, wikitext):
    "`depthprune --method kl` under torchrun (2 processes, gloo on loopback): each rank sweeps its share, the table is one process's."
    import os, socket, subprocess, sys
    from pathlib import Path
    text = tmp_path / "text.txt"
    text.write_text(wikitext.read_text()[:20000])
    args = ["--model_dir", family_checkpoint("llama", L), "--text_file", text, "--delete_layer_num", 2, "--method", "kl",
            "--nsamples", 4, "--seqlen", 32, "--eval_nsamples", 0, "--quiet"]
    one = depthprune(*args, "--result_json", tmp_path / "one.json")
    assert one.returncode == 0, one.stderr
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    env.pop("RANK", None); env.pop("WORLD_SIZE", None)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                          f"--master_port={port}", "-m", "depthprune_nb.cli", *map(str, args), "--result_json", str(tmp_path / "two.json")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert b["stats"]["world_size"] == 2 and b["deleted_layers"] == a["deleted_layers"]
    for key in ("kl_by_start", "ppl_by_start"):
        assert a[key].keys() == b[key].keys()
        for k in a[key]: assert abs(b[key][k] / a[key][k] - 1) <= 1e-6, (key, k, a[key][k], b[key][k])
