"""Every single layer of Qwen2.5-Coder-0.5B-Instruct deleted in turn, HumanEval on each: the frontier any n = 1 criterion
can reach, and how well each criterion ranks the layers the way HumanEval does (issue 25).

    # HumanEval (greedy, chat prompt) with each layer deleted; two processes side by side, one thread each
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python bench/layer_sweep_humaneval.py --problems 0:40 --layers none,11,13,15,...  &
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python bench/layer_sweep_humaneval.py --problems 0:40 --layers 10,12,14,...  &
    # the criteria: PPL and KL of every single-layer deletion on three calibration texts (none of them HumanEval)
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python bench/layer_sweep_humaneval.py --screen
    # the same deletions with the linear repair fitted on 48 windows of the code_chat text, folded in
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python bench/layer_sweep_humaneval.py --problems 0:40 --layers 12,11-12 --repair chat_code
    python bench/layer_sweep_humaneval.py --analyse          # the table, rank correlations, paired tests, whole-164 totals

Problems are a slice of ../shared/data/humaneval/HumanEval.jsonl.gz in file order (`--problems 40:164` measures the rest
for the layers the first slice singles out: a layer chosen on problems 0-39 is then judged on problems it was not chosen
on). Each layer is deleted with `temporarily_deleted` (no training; with --repair, `temporarily_repaired`). Results merge into --out under a lock
(runs keyed "<layers>@<start>:<end>"). Model-written programs run in `depthprune_nb.eval.sandbox`.

Criteria (`--screen`): `layer_importance(model, windows, 1, method="kl")` on 8 windows of 256 tokens of each text:
`wikitext` (WikiText-2 test, the seed's calibration), `code` (`depthprune_nb.calib.code_text()`, standard-library source),
and `chat_code`: the text of `--calib code_chat` (`depthprune_nb.calib.code_chat_text`): the unpruned model's own greedy
answers (128 tokens) to `calib.function_prompts()` (signatures and docstrings of standard-library functions, never
HumanEval) asked through the chat template with the words HumanEval's chat style uses, the text the model writes when it
is used as HumanEval uses it.
"""
import argparse, json, os, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from humaneval_qwen import DEFAULT_MODEL, find_shared, mcnemar  # noqa: E402

OUT = ROOT / "bench" / "results" / "layer_sweep_qwen05.json"
FULL = ROOT / "bench" / "results" / "humaneval_qwen05_full.json"  # earlier sessions' 164-problem runs: unpruned, today's picks


def merge(out:Path, section:str, entries:dict, meta:dict):
    "Merge `entries` into `section` of the JSON at `out` (under a lock on its folder), with `meta` at the top level."
    import fcntl
    lock = os.open(out.parent, os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        disk = json.loads(out.read_text()) if out.exists() else {}
        disk.update(meta); disk.setdefault(section, {}).update(entries)
        tmp = out.with_name(f".{out.name}.{os.getpid()}")
        tmp.write_text(json.dumps(disk, indent=1)); os.replace(tmp, out)
    finally: os.close(lock)


def layer_list(spec:str)->list:
    "'none,10,12-13' -> [[], [10], [12, 13]]"
    out = []
    for s in spec.split(","):
        s = s.strip()
        if s == "none": out.append([])
        elif "-" in s: a, b = map(int, s.split("-")); out.append(list(range(a, b + 1)))
        elif s: out.append([int(s)])
    return out


def sweep(a, meta):
    import torch
    from depthprune_nb.eval.humaneval import read_problems, run_humaneval
    from depthprune_nb.io.models import load_real_model
    from depthprune_nb.parts import locate
    from depthprune_nb.surgery import temporarily_deleted
    lo, hi = map(int, a.problems.split(":"))
    problems = read_problems(find_shared("humaneval", "HumanEval.jsonl.gz"))[lo:hi]
    from depthprune_nb.recover.repair import fit_linear_repair, temporarily_repaired
    model, tok = load_real_model(a.model)
    parts = locate(model)
    fit = repair_windows(a, model, tok) if a.repair else None
    for layers in layer_list(a.layers):
        key = f"{'-'.join(map(str, layers)) or 'none'}{'+rep_' + a.repair if a.repair and layers else ''}@{lo}:{hi}"
        extra, t = {}, time.perf_counter()
        if a.repair and layers:  # the map fitted on the unpruned model, folded into the layer before the cut
            rep = fit_linear_repair(model, fit, layers[0], len(layers), parts=parts)
            extra = dict(repair=dict(text=a.repair, windows=len(fit), seqlen=a.seqlen, unexplained=rep.unexplained,
                                     fit_s=round(time.perf_counter() - t, 1), fold=f"layers[{rep.fold_layer}].{rep.fold_path}"))
            ctx = temporarily_repaired(model, rep, parts)
        else: ctx = temporarily_deleted(model, layers, parts) if layers else torch.no_grad()
        with ctx, torch.no_grad():
            r = run_humaneval(model, tok, problems=problems, prompt_style="chat", max_new_tokens=a.max_new_tokens,
                              batch_size=a.batch_size, allow_code_execution=True, progress=False)
        run = dict(deleted_layers=layers, problems=[lo, hi], passed=r["passed"], n=r["n"], wall_s=round(time.perf_counter() - t, 1),
                   load_avg=round(os.getloadavg()[0], 1), **extra,
                   results=[{k: x[k] for k in ("task_id", "passed", "result", "completion")} for x in r["results"]])
        merge(Path(a.out), "runs", {key: run}, meta)
        print(f"{key}: {r['passed']}/{r['n']} in {run['wall_s']:.0f} s", flush=True)


def repair_windows(a, model, tok)->list:
    "--repair's fitting windows: the first --repair_windows windows of --seqlen tokens of its text."
    from depthprune_nb.calib import code_text
    from depthprune_nb.data import text_windows
    text = chat_code_text(model, tok) if a.repair == "chat_code" else code_text()
    windows = text_windows(tok, text, a.seqlen, "auto", progress=False)
    if len(windows) < a.repair_windows: raise SystemExit(f"--repair_windows {a.repair_windows}: the {a.repair} text makes {len(windows)}")
    return windows[:a.repair_windows]


def chat_code_text(model, tok)->str:
    "calib='code_chat''s text: the model's answers to function_prompts() asked as HumanEval's chat style asks (cached)."
    from depthprune_nb.calib import code_chat_text
    info = {}
    text = code_chat_text(model, tok, progress=True, info=info)
    print(f"chat_code: answers {'read from' if info['cached'] else 'generated into'} {info['cache']}", flush=True)
    return text


def screen(a, meta):
    from depthprune_nb.calib import code_text
    from depthprune_nb.data import text_windows, wikitext_text
    from depthprune_nb.io.models import load_real_model
    from depthprune_nb.pruner import layer_importance
    model, tok = load_real_model(a.model)
    make = {"wikitext": lambda: wikitext_text(text_file=find_shared("wikitext-2-raw-v1", "test.txt")), "code": code_text,
            "chat_code": lambda: chat_code_text(model, tok)}
    texts = {k: f() for k, f in make.items() if k in a.texts.split(",")}
    for name, text in texts.items():
        if name not in a.texts.split(","): continue
        windows = text_windows(tok, text, a.seqlen, "auto", progress=False)[a.window_offset:a.window_offset + a.nsamples]
        t = time.perf_counter()
        res = layer_importance(model, windows, a.screen_n, method="kl", compute_dtype="float32", progress=False)
        entry = dict(windows=len(windows), window_offset=a.window_offset, seqlen=a.seqlen, baseline_ppl=res.baseline_ppl, search_s=round(time.perf_counter() - t, 1),
                     ppl_by_start={str(k): v for k, v in res.ppl_by_start.items()}, kl_by_start={str(k): v for k, v in res.kl_by_start.items()},
                     kl_pick=res.deleted_layers,
                     ppl_pick=list(range(s := int(min(res.ppl_by_start, key=res.ppl_by_start.get)), s + a.screen_n)))
        key = name + ("" if a.screen_n == 1 else f"/n{a.screen_n}") + ("" if not a.window_offset else f"/from{a.window_offset}")
        merge(Path(a.out), "criteria", {key: entry}, meta)
        print(f"{name}: KL picks {entry['kl_pick']}, PPL picks {entry['ppl_pick']} ({entry['search_s']:.0f} s)", flush=True)


def spearman(x:list, y:list)->float:
    "Spearman's rank correlation (average ranks for ties), by pandas."
    import pandas as pd
    return pd.Series(x).corr(pd.Series(y), method="spearman")


def analyse(a):
    "Print every run against the unpruned model on the same problems, each criterion's score beside, and rank correlations."
    d = json.loads(Path(a.out).read_text())
    runs, crit = d.get("runs", {}), d.get("criteria", {})
    spans = sorted({k.split("@")[1] for k in runs}, key=lambda s: int(s.split(":")[0]))
    base = lambda s: s.split("+")[0]  # "12+rep_chat_code" -> "12"
    layers_all = sorted({k.split("@")[0] for k in runs}, key=lambda s: (s != "none", [int(x) for x in base(s).split("-")] if s != "none" else [], s))
    def run(l, s): return runs.get(f"{l}@{s}")
    def ok(r): return [x["passed"] for x in r["results"]]
    def score(l, c):  # a window's criterion entry: single layers by start in the n = 1 screens, pairs in the n = 2 ones
        l = base(l); n = 1 if l.isdigit() else 2
        e = crit.get(c if n == 1 else f"{c}/n2")
        return (e["ppl_by_start"].get(l.split("-")[0]), e["kl_by_start"].get(l.split("-")[0])) if e else (None, None)
    names = [c for c in crit if "/" not in c]
    print("deleted " + " ".join(f"{s:>16}" for s in spans) + "".join(f" {c:>15}" for c in names) + "   (PPL KL)")
    for l in layers_all:
        cells = []
        for s in spans:
            r, b = run(l, s), run("none", s)
            if r is None: cells.append(" " * 16); continue
            pv = None if l == "none" or b is None else mcnemar(ok(b), ok(r))["p_value"]
            p = "" if pv is None else " p<0.001" if pv < 0.001 else f" p={pv:.2g}"
            cells.append(f"{r['passed']:>3}/{r['n']:<3}{p:<9}")
        crits = "".join(f" {ppl:7.2f} {kl:7.4f}" if kl is not None else " " * 16 for ppl, kl in (score(l, c) for c in names)) if l != "none" else ""
        print(f"{l:>7} " + " ".join(cells) + crits)
    first = spans[0] if spans else None
    singles = [(l, run(l, first)["passed"]) for l in layers_all if l.isdigit() and run(l, first)]
    for c in names:
        for i, kind in enumerate(("PPL", "KL")):
            xs = [(score(l, c)[i], p) for l, p in singles if score(l, c)[i] is not None]
            if len(xs) > 2:  # lower criterion = better, so rho > 0: the criterion ranks the layers as HumanEval does
                print(f"Spearman(-{kind} on {c}, HumanEval {first}) over {len(xs)} single layers: {spearman([-x for x, _ in xs], [p for _, p in xs]):+.3f}")
    for c, e in crit.items(): print(f"{c}: KL picks {e['kl_pick']}, PPL picks {e['ppl_pick']}")
    whole(runs, base)


def whole(runs:dict, base)->None:
    "Deletions measured on all 164 problems (0:40 + 40:164), paired with the unpruned model and today's picks of FULL."
    full = json.loads(FULL.read_text())["runs"] if FULL.exists() else {}
    ref = {"unpruned": full.get("unpruned/chat"), "today n1 (10)": full.get("pruned_n1/chat"), "today n2 (10-11)": full.get("pruned_n2/chat")}
    ok = lambda rs: [x["passed"] for x in rs]
    for l in sorted({k.split("@")[0] for k in runs if k.endswith("@40:164") and f"{k.split('@')[0]}@0:40" in runs}):
        rs = runs[f"{l}@0:40"]["results"] + runs[f"{l}@40:164"]["results"]
        line = f"{l} on all 164: {sum(ok(rs))}/164"
        plain = runs.get(f"{base(l)}@0:40"), runs.get(f"{base(l)}@40:164")
        others = dict(ref, **({"plain deletion": {"results": plain[0]["results"] + plain[1]["results"]}} if "+" in l and all(plain) else {}))
        n = len(runs[f"{l}@0:40"]["deleted_layers"])
        for name, r in others.items():
            if r is None or len(r["results"]) != len(rs) or (name.startswith("today") and f"n{n} " not in name): continue
            assert [x["task_id"] for x in r["results"]] == [x["task_id"] for x in rs]
            m = mcnemar(ok(r["results"]), ok(rs))
            pv = "< 0.001" if m["p_value"] < 0.001 else f"= {m['p_value']:.2g}"
            line += f"; vs {name} ({sum(ok(r['results']))}): -{m['only_first_passed']}/+{m['only_second_passed']}, p {pv}"
        print(line)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--layers", default="", help="'none' (unpruned) and layers or windows to delete, e.g. none,10,12-13")
    ap.add_argument("--problems", default="0:40", help="a slice of HumanEval's problems, file order")
    ap.add_argument("--max_new_tokens", type=int, default=256)
    ap.add_argument("--batch_size", type=int, default=20)
    ap.add_argument("--screen", action="store_true", help="the criteria of every single-layer deletion on three texts")
    ap.add_argument("--screen_n", type=int, default=1, help="--screen: layers per candidate window")
    ap.add_argument("--texts", default="wikitext,code,chat_code", help="--screen: which texts")
    ap.add_argument("--nsamples", type=int, default=8)
    ap.add_argument("--window_offset", type=int, default=0, help="--screen: skip this many windows first (a replicate on other windows)")
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--repair", default=None, choices=("chat_code", "code"), help="each deletion with the linear repair "
                    "(recover.repair.fit_linear_repair on the unpruned model, folded into the layer before the cut) fitted on "
                    "--repair_windows windows of --seqlen tokens of this text (run key '<layers>+rep_<text>')")
    ap.add_argument("--repair_windows", type=int, default=48)
    ap.add_argument("--analyse", action="store_true")
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args(argv)
    if a.analyse: return analyse(a)
    import torch
    from depthprune_nb.engine.dtype_choice import machine_summary
    if find_shared("humaneval", "HumanEval.jsonl.gz") is None: print("skipped: ../shared/data absent"); return 0
    meta = dict(model=a.model, machine=machine_summary(), threads=torch.get_num_threads(), max_new_tokens=a.max_new_tokens,
                batch_size=a.batch_size, prompt_style="chat", torch=torch.__version__)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    if a.screen: screen(a, meta)
    if a.layers: sweep(a, meta)
    return 0


if __name__ == "__main__": sys.exit(main())
