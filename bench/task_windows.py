"""Does the pruned model still work, and does perplexity rank the candidates the way a task does? (issue 16, items 5, 6)

Candidates: the pick of every criterion (ppl_window, angular, block_influence, sleb) at each n of --criteria_ns, as
recorded by nbs/criteria_results/compare_criteria.py for the same model (nbs/criteria_results/smollm2.json, or
<model>.json: 4 calibration windows of 128 tokens from the start of the local WikiText-2 test text, 8 evaluation
windows from its end); and, with --top_k > 0, the --top_k windows of lowest calibration PPL at n = 2 (the exact
ppl_window search, recomputed here on the same windows). Each distinct layer set is measured once (the unpruned model
first) on a BIG-bench task (default discourse_marker_prediction):

- the evaluation slice: the first --eval_limit examples (file order), one 0/1 per example, compared with the unpruned
  model's on the same examples and, at each n, between the criteria's picks (exact McNemar test on the discordant pairs);
- the calibration slice (the n = 2 top-k only): the last --calib_limit examples of the file (never reported), what
  `rerank_by_tasks` would use to re-rank the top-k by task accuracy instead of PPL;
- calibration and evaluation PPL.

    DEPTHPRUNE_BIGBENCH=../shared/data/bigbench OMP_NUM_THREADS=1 python bench/task_windows.py \
        --out nbs/criteria_results/task_windows_smollm2.json
    # a real model of depthprune_nb.io.models, after `compare_criteria.py --model NAME --methods ppl_window angular
    # block_influence sleb --ns 1 2 3 4`; the criteria's picks only:
    DEPTHPRUNE_BIGBENCH=../shared/data/bigbench OMP_NUM_THREADS=1 python bench/task_windows.py --model gemma-3-270m --top_k 0

The JSON (default nbs/criteria_results/task_windows_<model>.json) is rewritten after every model, so a run stopped
early keeps what it finished.

"""
import argparse, contextlib, json, os, platform, time
from pathlib import Path

import torch

from depthprune_nb.engine.dtype_choice import machine_summary  # noqa: E402
from depthprune_nb.data import get_calib_eval_datasets
from depthprune_nb.io.load import load_model_and_tokenizer
from depthprune_nb.io.models import gguf_path
from depthprune_nb.parts import locate
from depthprune_nb.ppl import ppl_deleting
from depthprune_nb.pruner import layer_importance
from depthprune_nb.surgery import temporarily_deleted
from depthprune_nb.eval.tasks import evaluate_tasks, paired_test, read_task

ROOT = Path(__file__).resolve().parents[1]
TEXT = Path(os.environ.get("DEPTHPRUNE_TEXT_FILE", ROOT.parent / "shared/data/wikitext-2-raw-v1/test.txt"))


def mcnemar_exact(a:list, b:list)->dict:
    "`paired_test` (exact two-sided McNemar) of paired 0/1 outcomes, as this file records it."
    return paired_test(a, b).record("right")


def summarize(out:dict):
    "The re-ranking verdict over the PPL top-k rows measured so far (a run stopped early summarizes what it has)."
    top = [r for r in out["rows"] if r["label"].startswith("ppl_window rank")]
    if not top: return
    best = max(top, key=lambda r: (r["calib_task_acc"], -top.index(r)))
    out["rerank"] = dict(candidates_measured=len(top), ppl_pick=top[0]["layers"], task_pick=best["layers"],
                         changed=best["layers"] != top[0]["layers"], ppl_pick_eval_acc=top[0]["eval_acc"],
                         task_pick_eval_acc=best["eval_acc"], paired=mcnemar_exact(top[0]["eval_correct"], best["eval_correct"]),
                         cost_s=sum(r["calib_task_s"] for r in top), search_s=out["search_wall_s"],
                         note="cost_s: scoring the calibration slice for each of the top-k (what the re-rank adds to the search)")


CRITERIA = ("ppl_window", "angular", "block_influence", "sleb")


def by_n(out:dict):
    "Per n: each criterion's pick with its accuracy, and the paired test between every two distinct picks."
    rows = {tuple(r["layers"]): r for r in out["rows"]}
    out["by_n"] = {}
    for n in out["criteria_ns"]:
        picks = {m: out["criteria_picks"][str(n)][m] for m in CRITERIA}
        got = {m: rows[tuple(l)] for m, l in picks.items() if tuple(l) in rows}
        pairs = []
        distinct = sorted({tuple(l) for l in picks.values() if tuple(l) in rows})
        for i, a in enumerate(distinct):
            for b in distinct[i + 1:]:
                pairs.append(dict(first=list(a), second=list(b), **mcnemar_exact(rows[a]["eval_correct"], rows[b]["eval_correct"])))
        out["by_n"][str(n)] = dict(picks=picks, eval_acc={m: r["eval_acc"] for m, r in got.items()},
                                   eval_acc_stderr={m: r["eval_acc_stderr"] for m, r in got.items()},
                                   eval_ppl={m: r["eval_ppl"] for m, r in got.items()}, paired=pairs)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2", help="smollm2 or a name in depthprune_nb.io.registry.MODELS")
    p.add_argument("--task", default="discourse_marker_prediction")
    p.add_argument("--eval_limit", type=int, default=100)
    p.add_argument("--calib_limit", type=int, default=50)
    p.add_argument("--criteria_ns", type=int, nargs="*", default=[1, 2, 3, 4])
    p.add_argument("--top_k", type=int, default=5)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--text_file", default=str(TEXT))
    p.add_argument("--out", default=None, help="default nbs/criteria_results/task_windows_<model>.json")
    p.add_argument("--rows_from", nargs="*", default=[], help="results files of the same settings (e.g. another process's "
                   "--out, re-read before each layer set): their rows are kept and not measured again, so two processes "
                   "(one with --reverse) share the candidates, and a last run with both files merges them")
    p.add_argument("--reverse", action="store_true", help="measure the candidates in reverse order")
    p.add_argument("--only", nargs="*", default=None, help="measure only these layer sets, each as comma-separated "
                   "indices (e.g. 12,13,18), e.g. a third process's share; the unpruned row comes from --rows_from")
    a = p.parse_args()
    a.out = a.out or f"nbs/criteria_results/task_windows_{a.model}.json"
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    t_all = time.perf_counter()
    src = gguf_path(a.model)
    model, tok = load_model_and_tokenizer(src)
    parts = locate(model)
    calib, held = get_calib_eval_datasets(None, "cpu", 128, text_file=a.text_file, tokenizer=tok, nsamples=4, eval_nsamples=8)
    crit_file = ROOT / "nbs/criteria_results" / f"{a.model}.json"
    crit = [r for r in json.loads(crit_file.read_text())["rows"] if r["method"] in CRITERIA]
    picks = {str(n): {r["method"]: r["deleted_layers"] for r in crit if r["n"] == n} for n in a.criteria_ns}
    search_s, baseline, cands = None, None, []
    if a.top_k:  # the n = 2 exact search again, for its ranking of every window (the criteria file keeps the pick only)
        t0 = time.perf_counter()
        res = layer_importance(model, calib, 2, parts, progress=False)
        search_s, baseline = time.perf_counter() - t0, res.baseline_ppl
        starts = sorted(res.ppl_by_start, key=res.ppl_by_start.get)[:a.top_k]
        cands = [dict(layers=[s, s + 1], source=f"ppl_window rank {i + 1}", calib=True) for i, s in enumerate(starts)]
        assert picks["2"]["ppl_window"] == cands[0]["layers"], f"the recomputed n = 2 pick differs from {crit_file}"
    for r in sorted(crit, key=lambda r: r["n"]):
        if r["n"] not in a.criteria_ns: continue
        if r["deleted_layers"] not in [c["layers"] for c in cands]:
            cands.append(dict(layers=r["deleted_layers"], source=f"{r['method']} pick n={r['n']}",
                             calib=bool(a.top_k) and r["n"] == 2))
        for c in cands:
            if r["deleted_layers"] == c["layers"]: c.setdefault("picked_by", []).append(f"{r['method']} n={r['n']}")
    # measured in this order, so a run stopped early has the most telling rows: the criteria's picks by n, then the PPL
    # ranks 2..k at n = 2
    ranked = [c for c in cands if c["source"].startswith("ppl_window rank")]
    cands = ranked[:1] + sorted([c for c in cands if c not in ranked], key=lambda c: len(c["layers"])) + ranked[1:]
    total = read_task(a.task)["total"]
    out = dict(model=src.name, task=a.task, eval_examples=f"first {a.eval_limit} (file order)",
               calib_examples=f"last {a.calib_limit} of {total} (file order)" if a.top_k else None, seqlen=128, calib_windows=len(calib),
               eval_windows=len(held), search_wall_s=search_s and round(search_s, 1), baseline_calib_ppl=baseline,
               criteria_ns=a.criteria_ns, criteria_picks=picks,
               machine=f"{machine_summary()}, shared with other jobs",
               command="DEPTHPRUNE_BIGBENCH=../shared/data/bigbench OMP_NUM_THREADS=1 python bench/task_windows.py "
                       f"--model {a.model} --eval_limit {a.eval_limit} --calib_limit {a.calib_limit} --top_k {a.top_k} --criteria_ns "
                       + " ".join(map(str, a.criteria_ns)), rows=[])
    def take_rows_from():  # rows measured elsewhere (same model, task and examples) join this file's
        for f in a.rows_from:
            if not Path(f).exists(): continue
            other = json.loads(Path(f).read_text())
            assert (other["model"], other["task"], other["eval_examples"]) == (out["model"], out["task"], out["eval_examples"]), f
            have = [r["layers"] for r in out["rows"]]
            out["rows"] += [r for r in other["rows"] if r["layers"] not in have]
        out["rows"].sort(key=lambda r: r["layers"] != [])  # the unpruned row first: every comparison refers to it
        if out["rows"]: summarize(out); by_n(out)
    out["rows_from"] = a.rows_from or None
    def measure(layers, label, extra, with_calib=True):
        take_rows_from()
        if layers in [r["layers"] for r in out["rows"]]: return
        t0 = time.perf_counter()
        with (temporarily_deleted(model, layers, parts) if layers else contextlib.nullcontext()):
            ev = evaluate_tasks(model, tok, [a.task], limit=a.eval_limit, batch_size=a.batch_size, per_example=True)[a.task]
            t_ev = time.perf_counter() - t0
            t1 = time.perf_counter()
            ca = evaluate_tasks(model, tok, [a.task], limit=a.calib_limit, start=total - a.calib_limit,
                                batch_size=a.batch_size)[a.task] if with_calib else None
            t_ca = time.perf_counter() - t1
        row = dict(label=label, layers=layers, **extra, calib_ppl=ppl_deleting(model, calib, layers, parts),
                   eval_ppl=ppl_deleting(model, held, layers, parts), eval_acc=ev["acc"], eval_acc_stderr=ev["acc_stderr"], eval_correct=ev["correct"],
                   eval_task_s=round(t_ev, 1), wall_s=round(time.perf_counter() - t0, 1), load_avg=round(os.getloadavg()[0], 1))
        if ca: row.update(calib_task_acc=ca["acc"], calib_task_acc_stderr=ca["acc_stderr"], calib_task_s=round(t_ca, 1))
        if out["rows"]: row["vs_unpruned"] = mcnemar_exact(out["rows"][0]["eval_correct"], ev["correct"])
        out["rows"].append(row)
        summarize(out); by_n(out)
        Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
        print(label, layers, {k: v for k, v in row.items() if k not in ("eval_correct",)}, flush=True)
    measure([], "unpruned", {}, bool(a.top_k))  # the calibration slice serves the re-rank only
    if a.only is not None: cands = [c for c in cands if ",".join(map(str, c["layers"])) in a.only]
    for c in (cands[::-1] if a.reverse else cands): measure(c["layers"], c["source"], dict(picked_by=c.get("picked_by", [])), c["calib"])
    take_rows_from()
    out["total_wall_s"] = round(time.perf_counter() - t_all, 1)  # this process's; each row keeps its own wall_s
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__": main()
