"""Benchmark the fast engine against the reference brute force on the same model and data.

    python bench/bench_engine.py            # the full run recorded in bench/RESULTS.md (~15 min on 2 CPU cores)
    python bench/bench_engine.py --quick    # a smaller run, to check the script works (~2 min)

Three parts, each reported as ratios measured in this one run:
  A. a Llama-shaped random model with 32 layers (reduced width): reference vs exact engine vs early abort;
  B. an OPT-125m-shaped random model (12 layers, hidden 768, vocab 50272): the head's share of the cost;
  C. a 32-layer model with real layer structure, trained here for a few minutes: approximate mode vs the
     exact table, early abort, and mix mode (CPU standing in for the accelerator) with its weight moves.
Calibration windows are cut from ../shared/data/wikitext-2-raw-v1/test.txt (relative to the project
root); the benchmark exits with a message, doing nothing, if that file is absent.
"""
import argparse, logging, math, os, platform, sys, threading, time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT.parent / "shared" / "data" / "wikitext-2-raw-v1" / "test.txt"


def rss()->int:
    "Resident memory of this process now, in bytes."
    with open("/proc/self/statm") as f: return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Measured:
    "Wall time, CPU time and peak resident memory (sampled every 10 ms, above the level at entry) of a block."
    def __enter__(self):
        self.base = self.peak = rss()
        self._stop = threading.Event()
        def sample():
            while not self._stop.wait(0.01): self.peak = max(self.peak, rss())
        self._t = threading.Thread(target=sample, daemon=True); self._t.start()
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self
    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.t0, time.process_time() - self.c0
        self._stop.set(); self._t.join()
        self.peak = max(self.peak, rss())
        self.peak_extra = self.peak - self.base


def mib(b): return f"{b / 2**20:,.0f} MiB"


def machine()->str:
    "The machine in words (`machine_summary`), and the load at the start: the machine may be shared."
    from depthprune_nb.engine.dtype_choice import machine_summary
    load = open("/proc/loadavg").read().split()[:3] if Path("/proc/loadavg").exists() else ["?"]
    return (f"{machine_summary()}; load average at start {' '.join(load)} "
            f"(wall times are noisy on a shared machine, ratios within one run are what count)")


_TOKENIZED = {}

def tokenizer_and_windows(vocab_size:int, seqlen:int, nsamples:int, train_frac:float=0.0):
    "A BPE tokenizer trained on the text (or its first part), the training ids, and `nsamples` windows of `seqlen` tokens from the rest."
    from depthprune_nb.testing import train_tokenizer
    if (vocab_size, train_frac) not in _TOKENIZED:
        text = TEXT.read_text(encoding="utf-8")
        cut = text.rfind("\n\n", 0, int(len(text) * train_frac)) + 2 if train_frac else 0
        train, held = (text[:cut], text[cut:]) if train_frac else (text, text)
        tok = train_tokenizer(train.split("\n\n"), vocab_size=vocab_size)
        held_ids = torch.tensor(tok(held, verbose=False)["input_ids"])
        train_ids = torch.tensor(tok(train, verbose=False)["input_ids"]) if train_frac else None
        _TOKENIZED[vocab_size, train_frac] = tok, train_ids, held_ids
    tok, train_ids, ids = _TOKENIZED[vocab_size, train_frac]
    windows = [ids[i * seqlen:(i + 1) * seqlen].unsqueeze(0) for i in range(min(nsamples, len(ids) // seqlen))]
    return tok, train_ids, windows


def compare(title:str, model, data, n:int, runs:dict):
    "Run the reference and each engine variant on the same model and data; print the figures."
    from depthprune_nb.engine.reference import reference_search
    L = len(model.model.layers) if hasattr(model, "model") and hasattr(model.model, "layers") else None
    print(f"\n## {title}\n")
    results = {}
    for name, fn in runs.items():
        with Measured() as m: r = fn()
        results[name] = (r, m)
        print(f"- ran {name}: {m.wall:.1f} s wall, {m.cpu:.1f} s CPU, chosen window {r.deleted_layers}", flush=True)
    ref, mref = results["reference"]
    print(f"\n| | wall s | CPU s | wall ratio | layer passes | ratio | head passes | peak RSS above start | held states |"
          f" max rel PPL diff | same window |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for name, (r, m) in results.items():
        exact = [s for s in ref.ppl_by_start if s not in r.lower_bound_starts and s not in r.stats.get("estimated_starts", [])]
        diff = max(abs(r.ppl_by_start[s] / ref.ppl_by_start[s] - 1) for s in exact)
        diff = max(diff, abs(r.baseline_ppl / ref.baseline_ppl - 1))
        lp = r.stats["layer_passes"]
        print(f"| {name} | {m.wall:.1f} | {m.cpu:.1f} | {mref.wall / m.wall:.2f}x | {lp:,} | "
              f"{ref.stats['layer_passes'] / lp:.2f}x | {r.stats['head_passes']:,} | {mib(m.peak_extra)} | "
              f"{mib(r.stats.get('peak_state_bytes', 0)) if name != 'reference' else '-'} | {diff:.1e} | "
              f"{'yes' if r.deleted_layers == ref.deleted_layers else 'NO'} |")
    return results


def llama32(quick:bool):
    from transformers import LlamaConfig, LlamaForCausalLM
    from depthprune_nb.engine.reference import reference_search
    from depthprune_nb import fast_search
    H, seqlen, ns, n = (128, 64, 2, 2) if quick else (256, 256, 4, 2)
    tok, _, data = tokenizer_and_windows(4096, seqlen, ns)
    cfg = LlamaConfig(hidden_size=H, intermediate_size=int(H * 2.6875), num_attention_heads=max(2, H // 64),
                      num_key_value_heads=max(1, H // 128), num_hidden_layers=32, vocab_size=len(tok),
                      max_position_embeddings=2048)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    print(f"\nLlama-shaped random model: 32 layers, hidden {H}, intermediate {cfg.intermediate_size}, "
          f"{cfg.num_attention_heads} heads ({cfg.num_key_value_heads} KV), vocab {cfg.vocab_size} "
          f"(local BPE), {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, float32; "
          f"{len(data)} windows of {seqlen} tokens; n = {n}")
    compare("A. Llama-shaped, 32 layers: reference vs fast engine", model, data, n, {
        "reference": lambda: reference_search(model, data, n, progress=False),
        "fast exact (full table)": lambda: fast_search(model, data, n, progress=False),
        "fast, early abort": lambda: fast_search(model, data, n, early_abort=True, progress=False),
    })
    print("\nOn random weights every window scores about the same (near-ties), so early abort can stop almost "
          "nothing here; see part C for a model with structure.")


def opt125m(quick:bool):
    from transformers import OPTConfig, OPTForCausalLM
    from depthprune_nb.engine.reference import reference_search
    from depthprune_nb import fast_search
    from depthprune_nb.engine.replay import head_logits, probe_layer_calls
    from depthprune_nb.parts import locate
    seqlen, ns, n = (64, 1, 2) if quick else (256, 2, 2)
    tok, _, data = tokenizer_and_windows(4096, seqlen, ns)
    cfg = OPTConfig(hidden_size=768, ffn_dim=3072, num_attention_heads=12, num_hidden_layers=12, vocab_size=50272,
                    word_embed_proj_dim=768, max_position_embeddings=2048, do_layer_norm_before=True)
    torch.manual_seed(0)
    model = OPTForCausalLM(cfg).eval()
    print(f"\nOPT-125m-shaped random model: 12 layers, hidden 768, vocab 50272, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, float32; "
          f"{len(data)} windows of {seqlen} tokens (ids from a 4096-entry local BPE); n = {n}")
    # the head's share: one forward's layers vs its head + loss, timed separately
    parts, ids = locate(model), data[0]
    out_lens = {}
    with torch.inference_mode():
        h, calls = probe_layer_calls(parts, ids, out_lens)
        t0 = time.perf_counter()
        for j, layer in enumerate(parts.layers): h = calls[j](layer, h)
        t_layers = time.perf_counter() - t0
        from depthprune_nb.ppl import window_nll
        t0 = time.perf_counter()
        window_nll(head_logits(parts, ids, h, out_lens)[0], ids[0])
        t_head = time.perf_counter() - t0
    print(f"\nOne window of {seqlen} tokens: 12 layers {t_layers:.2f} s, final norm + lm_head + loss {t_head:.2f} s: "
          f"the head is {t_head / (t_layers + t_head):.0%} of a forward. Prefix reuse removes layer passes, "
          "not heads (every window needs its own head), so the head's share caps the speed-up.")
    compare("B. OPT-125m-shaped, 12 layers: reference vs fast engine", model, data, n, {
        "reference": lambda: reference_search(model, data, n, progress=False),
        "fast exact (full table)": lambda: fast_search(model, data, n, progress=False),
    })


def train_structured(quick:bool):
    "A narrow 32-layer Llama trained briefly on the first 90% of the text: layers that matter unequally."
    from transformers import LlamaConfig, LlamaForCausalLM
    seqlen, ns, steps = (64, 8, 30) if quick else (128, 64, 200)
    tok, train_ids, data = tokenizer_and_windows(2048, seqlen, ns, train_frac=0.9)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=172, num_attention_heads=4, num_key_value_heads=2,
                      num_hidden_layers=32, vocab_size=len(tok), max_position_embeddings=512)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    g = torch.Generator().manual_seed(0)
    model.train()
    t0, losses = time.perf_counter(), []
    for step in range(steps):
        lr = 3e-3 * min(1, (step + 1) / 20) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for grp in opt.param_groups: grp["lr"] = lr
        offs = torch.randint(0, len(train_ids) - seqlen, (8,), generator=g).tolist()
        x = torch.stack([train_ids[o:o + seqlen] for o in offs])
        loss = model(input_ids=x, labels=x, use_cache=False).loss
        loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(); opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    print(f"\nStructured model: Llama-shaped, 32 layers, hidden 64, vocab {len(tok)}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, trained {steps} steps "
          f"(batch 8 x {seqlen} tokens) in {time.perf_counter() - t0:.0f} s on the first 90% of the text; "
          f"training loss {sum(losses[:10]) / 10:.2f} -> {sum(losses[-10:]) / 10:.2f}. "
          f"Calibration: {len(data)} held-out windows of {seqlen} tokens.")
    return model, data


def structured(quick:bool):
    from depthprune_nb import fast_search, approx_search
    model, data = train_structured(quick)
    n = 2
    print(f"\n## C. A model with real layer structure (n = {n}): exact table vs early abort vs approximate vs mix mode\n")
    runs = {
        "fast exact (full table)": lambda: fast_search(model, data, n, progress=False),
        "fast, early abort": lambda: fast_search(model, data, n, early_abort=True, progress=False),
        "approximate (halving, keep_exact=3)": lambda: approx_search(model, data, n, keep_exact=3, progress=False),
        "approximate (halving, keep_exact=1)": lambda: approx_search(model, data, n, keep_exact=1, progress=False),
        "fast exact, mix mode (CPU as device), first 16 windows": lambda: fast_search(
            model, data[:16], n, save_gpu_memory=True, device="cpu", chunk_size=8, progress=False),
    }
    res = {}
    for name, fn in runs.items():
        with Measured() as m: r = fn()
        res[name] = (r, m)
        print(f"- ran {name}: {m.wall:.1f} s wall, {m.cpu:.1f} s CPU", flush=True)
    ex, mex = res["fast exact (full table)"]
    best = ex.best_ppl
    print(f"\nExact best window {ex.deleted_layers}: PPL {best:.3f} (baseline {ex.baseline_ppl:.3f}); "
          f"worst window PPL {max(ex.ppl_by_start.values()):.3f}.\n")
    print("| | wall s | CPU s | speed-up vs exact table (wall / CPU / layer passes) | head passes | picked | "
          "its exact PPL vs best | stopped early / dropped |\n|---|---|---|---|---|---|---|---|")
    for name, (r, m) in res.items():
        if "first 16" in name: continue  # other data: not comparable
        st = r.stats
        gone = len(r.lower_bound_starts) or len(st.get("estimated_starts", []))
        print(f"| {name} | {m.wall:.1f} | {m.cpu:.1f} | {mex.wall / m.wall:.2f}x / {mex.cpu / m.cpu:.2f}x / "
              f"{ex.stats['layer_passes'] / st['layer_passes']:.2f}x | {st['head_passes']:,} | {r.deleted_layers} | "
              f"{ex.ppl_by_start[r.best_start] / best - 1:+.3%} | {gone} of {len(ex.ppl_by_start)} |")
    for k in (3, 1):
        a = res[f"approximate (halving, keep_exact={k})"][0]
        print(f"\nApproximate mode, keep_exact={k}: rounds {a.stats['rounds']}; reported possible gap to the best: "
              f"{a.stats['possible_gap_rel']:.2%} (statistical, two standard errors).")
    mix = res["fast exact, mix mode (CPU as device), first 16 windows"][0].stats
    print(f"Mix mode: {mix['weight_moves']} weight moves for {mix['num_chunks']} sample chunks of {mix['chunk_size']} "
          f"({mix['setup_weight_moves']} once, to learn the layer's output type); at most "
          f"{mix['weight_moves_per_chunk_max']} per chunk for L = 32 layers. The reference's memory-saving mode moves "
          f"every layer on every call: {(32 * 16) * (len(ex.ppl_by_start) + 1) - n * 16 * len(ex.ppl_by_start):,} moves for the same 16 windows.")
    ea = res["fast, early abort"][0]
    print(f"Early abort scored window {ea.stats['first_scored']} first (the proxy's favourite); "
          f"stopped {len(ea.lower_bound_starts)} windows early: {ea.stats['stopped_after_chunk']} (start: chunk).")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, to check the script (figures not meaningful)")
    p.add_argument("--parts", default="ABC", help="which parts to run, e.g. AC")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on this shared 2-core machine two threads ran 4-5x slower)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if not TEXT.exists():
        print(f"skipped: calibration text not found at {TEXT} (the benchmark needs ../shared/data)")
        return 0
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    print(f"# Fast engine benchmark{' (quick)' if a.quick else ''}\n\nMachine: {machine()}")
    if "A" in a.parts: llama32(a.quick)
    if "B" in a.parts: opt125m(a.quick)
    if "C" in a.parts: structured(a.quick)
    print(f"\nTotal benchmark time: {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
