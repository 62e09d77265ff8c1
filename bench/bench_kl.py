"""Cost of the KL table against the PPL table (issue 25, item 1): the same exact engine, the same model, the same
calibration windows, the same process, one torch thread; the two searches alternate `--repeats` times so that the
shared machine's load falls on both alike.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python bench/bench_kl.py                      # SmolLM2-135M, 4 x 256 tokens, n = 2
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python bench/bench_kl.py --windows 1 --seqlen 64 --repeats 1   # a quick check

Times: wall and CPU seconds of each search, and the seconds spent inside the final norm + output head modules
(forward hooks), the rest being decoder layers and the KL/NLL arithmetic. Prints one JSON object and appends it to
bench/results/bench_kl.jsonl.
"""
import argparse, json, sys, time
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT.parent / "shared" / "data" / "wikitext-2-raw-v1" / "test.txt"


@contextmanager
def timed(mods:list):
    "Seconds spent inside `mods`, summed over calls; hooks removed on exit."
    spent, t0, hs = [0.0], {}, []
    for m in mods:
        hs.append(m.register_forward_pre_hook(lambda mod, a: t0.__setitem__(id(mod), time.perf_counter())))
        hs.append(m.register_forward_hook(lambda mod, a, o: spent.__setitem__(0, spent[0] + time.perf_counter() - t0.pop(id(mod)))))
    try: yield spent
    finally:
        for h in hs: h.remove()


def one(search, model, parts, data, n):
    t, c = time.perf_counter(), time.process_time()
    with timed([parts.norm, model.get_output_embeddings()]) as head:
        r = search(model, data, n, progress=False)
    return r, dict(wall_s=time.perf_counter() - t, cpu_s=time.process_time() - c, norm_head_s=head[0],
                   layer_passes=r.stats["layer_passes"], head_passes=r.stats["head_passes"], head_calls=r.stats["head_calls"],
                   peak_state_bytes=r.stats["peak_state_bytes"], deleted_layers=r.deleted_layers)


def main(argv=None):
    from depthprune_nb.data import get_wikitext_dataset
    from depthprune_nb.engine.dtype_choice import machine_summary
    from depthprune_nb.engine.exact import fast_search
    from depthprune_nb.engine.kl import kl_search
    from depthprune_nb.io.models import load_real_model
    from depthprune_nb.parts import locate
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--n", type=int, default=2)
    p.add_argument("--windows", type=int, default=4)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--text_file", default=str(TEXT))
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    model, tok = load_real_model(a.model)
    parts = locate(model)
    data = get_wikitext_dataset(None, seqlen=a.seqlen, text_file=a.text_file, tokenizer=tok, nsamples=a.windows, progress=False)
    runs, results = [], {}
    for k in range(a.repeats):
        for name, search in (("ppl", fast_search), ("kl", kl_search)):
            r, st = one(search, model, parts, data, a.n)
            runs.append(dict(method=name, repeat=k, **st)); results[name] = r
            print(f"{name} repeat {k}: wall {st['wall_s']:.1f} s, CPU {st['cpu_s']:.1f} s, norm+head {st['norm_head_s']:.1f} s", file=sys.stderr)
    ppl, kl = results["ppl"], results["kl"]
    best = {m: min((x for x in runs if x["method"] == m), key=lambda x: x["wall_s"]) for m in ("ppl", "kl")}
    rel = {s: kl.ppl_by_start[s] / v - 1 for s, v in ppl.ppl_by_start.items()}   # the KL search's PPL column vs the PPL search
    worst_ppl = max(abs(x) for x in rel.values())
    out = dict(model=a.model, n=a.n, windows=a.windows, seqlen=a.seqlen, threads=torch.get_num_threads(),
               machine=machine_summary(), vocab=model.get_output_embeddings().weight.shape[0], num_layers=parts.num_layers,
               runs=runs, kl_over_ppl_wall=best["kl"]["wall_s"] / best["ppl"]["wall_s"],
               kl_over_ppl_cpu=best["kl"]["cpu_s"] / best["ppl"]["cpu_s"],
               ppl_pick=ppl.deleted_layers, kl_pick=kl.deleted_layers, baseline_ppl=ppl.baseline_ppl,
               kl_table_ppl_max_rel_diff=worst_ppl, kl_table_ppl_rel_diff_by_start=rel, kl_by_start=kl.kl_by_start,
               ppl_by_start=ppl.ppl_by_start)
    print(json.dumps(out, indent=1))
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    with open(ROOT / "bench" / "results" / "bench_kl.jsonl", "a") as f: f.write(json.dumps(out) + "\n")


if __name__ == "__main__": main()
