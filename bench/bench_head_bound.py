"""The head bound against today's exact table and the Quark-style brute force, on real models, in one run.

    python bench/bench_head_bound.py --model_dir "$(depthprune-gguf-path gemma-3-270m)" --n 2 --nsamples 8
    python bench/bench_head_bound.py --model_dir FOLDER_OR_GGUF --n 2 4 --nsamples 8 --engines reference fast head_bound

For each n it runs, one after the other on the same windows: `reference_search` (the brute force: every window
deleted in turn, a full forward each), `fast_search` (today's exact table: shared layer passes, a full head per
window) and `fast_search(head_bound=True)`; and prints seconds, layer passes, head rows computed (vocabulary rows x
samples; the brute force computes every row for every window), the ratio of each wall time to the brute force's
measured in this run (wall and CPU time: on a machine shared by many processes, a single-threaded run's CPU
seconds are the steadier measure), the pick and its PPL (relative difference from the brute force's). The machine is named with its
load average at the start and the end: on a shared machine the ratios within one run are what count.
"""
import argparse, copy, json, math, os, platform, sys, time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from depthprune_nb.data import get_wikitext_dataset  # noqa: E402
from depthprune_nb.io.load import load_model_and_tokenizer  # noqa: E402
from depthprune_nb.engine.reference import reference_search  # noqa: E402
from depthprune_nb.engine.exact import fast_search  # noqa: E402

TEXT = ROOT.parent / "shared" / "data" / "wikitext-2-raw-v1" / "test.txt"


def load()->str: return " ".join(open("/proc/loadavg").read().split()[:3]) if Path("/proc/loadavg").exists() else "?"


def machine()->str:
    from depthprune_nb.engine.dtype_choice import machine_summary
    return machine_summary()


def split_engine(spec:str, default_dtype:str|None)->tuple[str, str|None]:
    "`head_bound:bfloat16` -> ('head_bound', 'bfloat16'); a bare name takes `--compute_dtype` (the brute force: float32)"
    name, _, dtype = spec.partition(":")
    if name not in ("reference", "fast", "head_bound"): raise SystemExit(f"--engines: unknown engine {name!r}; valid: reference, fast, head_bound")
    return name, (dtype or (None if name == "reference" else default_dtype))


def run(engine:str, model, data, n:int, dtype:str|None):
    t0, c0 = time.perf_counter(), time.process_time()
    kw = dict(progress=False, compute_dtype=dtype)
    if engine == "reference":
        # the brute force in a low precision: a copy of the model cast to it (its PPL is that precision's, not float32's)
        m = model if dtype in (None, "float32") else copy.deepcopy(model).to(getattr(torch, dtype))
        t0, c0 = time.perf_counter(), time.process_time()
        r = reference_search(m, data, n, progress=False)
    else: r = fast_search(model, data, n, head_bound=engine == "head_bound", **kw)
    return r, time.perf_counter() - t0, time.process_time() - c0


def head_rows(r, V:int, N:int)->int:
    st = r.stats
    if "head_rows" in st: return st["head_rows"]
    return st["head_passes"] * V  # every head pass computes all V rows


def table(jsonl:str)->str:
    "A markdown table of the JSON lines in `jsonl`: per model and n, each run's seconds and its ratio to that n's float32 brute force."
    rows = [json.loads(l) for l in open(jsonl) if l.strip()]
    out = ["| model | n | engine | wall s | CPU s | vs brute force (wall) | vs brute force (CPU) | layer passes | head rows (M) | "
           "full-head windows | pick | PPL | rel. to brute force |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key in dict.fromkeys((r["model"], r["n"]) for r in rows):
        group = [r for r in rows if (r["model"], r["n"]) == key]
        ref = next((r for r in group if r["engine"] in ("reference", "reference:float32")), None)
        for r in group:
            w = f"{ref['seconds'] / r['seconds']:.2f}x" if ref else "n/a"
            c = f"{ref['cpu_seconds'] / r['cpu_seconds']:.2f}x" if ref else "n/a"
            ex = "all" if r["exact_starts"] is None else f"{len(r['exact_starts'])} ({', '.join(map(str, r['exact_starts']))})"
            pick = f"{r['pick'][0]}-{r['pick'][-1]}" if len(r["pick"]) > 1 else str(r["pick"][0])
            out.append(f"| {key[0].removesuffix('-st')} | {key[1]} | {r['engine']} | {r['seconds']:.0f} | {r['cpu_seconds']:.0f} | {w} | {c} | "
                       f"{r['layer_passes']:,} | {r['head_rows'] / 1e6:.2f} | {ex} | {pick} | {r['ppl']:.4f} | {r['rel_to_brute_force'] or 0} |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--table": print(table(sys.argv[2])); return
    ap.add_argument("--model_dir", required=True, help="a model folder or a .gguf file (or: --table JSONL, the table of earlier runs)")
    ap.add_argument("--n", type=int, nargs="+", default=[2])
    ap.add_argument("--nsamples", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--engines", nargs="+", default=["reference", "fast", "head_bound"],
                    help="reference | fast | head_bound, each optionally :DTYPE (e.g. head_bound:bfloat16); the first float32 "
                         "reference is the baseline of the ratios")
    ap.add_argument("--compute_dtype", default=None, help="bfloat16: the fast engines in low precision, confirmed in float32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="append one JSON line per run here")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if not TEXT.exists(): raise SystemExit(f"WikiText-2 test text not found at {TEXT}")
    t = time.perf_counter()
    model, tok = load_model_and_tokenizer(a.model_dir, dtype="float32")
    name = Path(a.model_dir).name
    data = get_wikitext_dataset(a.model_dir, seqlen=a.seqlen, text_file=TEXT, tokenizer=tok, nsamples=a.nsamples, progress=False)
    V = model.get_output_embeddings().weight.shape[0]
    print(f"# {name}: {model.config.num_hidden_layers} layers, vocabulary {V:,}; {len(data)} windows of {a.seqlen} tokens; "
          f"loaded in {time.perf_counter() - t:.0f} s\n# {machine()}; load average at start {load()}")
    for n in a.n:
        rows, ref = [], None
        for spec in a.engines:
            eng, dtype = split_engine(spec, a.compute_dtype)
            e = eng + (f":{dtype}" if dtype else "")
            r, s, cpu = run(eng, model, data, n, dtype)
            if ref is None and eng == "reference" and dtype in (None, "float32"): ref = (r, s, cpu)
            rows.append((e, r, s, cpu))
            rel = "" if ref is None else f"{r.best_ppl / ref[0].best_ppl - 1:+.1e}"
            line = dict(model=name, n=n, engine=e,
                        seconds=round(s, 1), cpu_seconds=round(cpu, 1), layer_passes=r.stats.get("layer_passes"), head_rows=head_rows(r, V, len(data)),
                        pick=r.deleted_layers, ppl=r.best_ppl, rel_to_brute_force=rel, load=load(),
                        exact_starts=r.stats.get("head_bound", {}).get("exact_starts"),
                        rows_per_bound=r.stats.get("head_bound", {}).get("rows_per_bound"))
            print(json.dumps(line), flush=True)
            if a.json: open(a.json, "a").write(json.dumps(line) + "\n")
        base, bcpu = (ref[1], ref[2]) if ref else (None, None)
        print(f"\n| {name} n={n} | seconds | CPU seconds | layer passes | head rows (M) | vs brute force (wall, CPU) | pick | PPL | rel. to brute force |\n|---|---|---|---|---|---|---|---|---|")
        for e, r, s, cpu in rows:
            ratio = f"{base / s:.2f}x, {bcpu / cpu:.2f}x" if base else "n/a"
            rel = f"{r.best_ppl / ref[0].best_ppl - 1:+.1e}" if ref else "n/a"
            print(f"| {e} | {s:.0f} | {cpu:.0f} | {r.stats.get('layer_passes'):,} | {head_rows(r, V, len(data)) / 1e6:.2f} | {ratio} | "
                  f"{r.deleted_layers} | {r.best_ppl:.4f} | {rel} |")
        print(f"load average at the end: {load()}\n", flush=True)


if __name__ == "__main__":
    main()
