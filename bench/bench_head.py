"""Speed where the head dominates (issue 19, item 7): the exact engine against the Quark-style brute force
(`reference_search`) on real models whose output head costs as much as many decoder layers, and where the
time goes (decoder layers, final norm + head, the rest: embeddings, masks, the loss).

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python bench/bench_head.py --model gemma-3-270m
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python bench/bench_head.py --model qwen2.5-coder-0.5b-instruct
    PYTHONPATH=$PWD python bench/bench_head.py --quick     # a tiny random GGUF model: checks the script (~1 min)

One run each, n = 2, the same calibration windows (the start of the local WikiText-2 test text, cut by the
default window rule) for both searches, float32, one torch thread. Times come from forward hooks on every decoder
layer, on the final norm and on the head module, summed per search; the rest is the search's wall time minus
those. The report is the ratios within this run (the machine is shared: absolute seconds move with its load).
It prints one JSON object and appends it to bench/results/bench_head.jsonl.
"""
import argparse, json, os, sys, tempfile, time
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "nbs" / "real_models_results"))
from run_real_models import TEXT_FILE, gguf_file # one place that finds the models


@contextmanager
def timed_modules(groups:dict):
    "Seconds spent inside the modules of each group (name -> list of modules), summed over calls; hooks removed on exit."
    spent, handles, t0 = {g: 0.0 for g in groups}, [], {}
    for g, mods in groups.items():
        for m in mods:
            handles.append(m.register_forward_pre_hook(lambda mod, args, g=g: t0.__setitem__(id(mod), time.perf_counter())))
            handles.append(m.register_forward_hook(
                lambda mod, args, out, g=g: spent.__setitem__(g, spent[g] + time.perf_counter() - t0.pop(id(mod)))))
    try: yield spent
    finally:
        for h in handles: h.remove()


def one(model, parts, data, n, engine):
    from depthprune_nb.pruner import layer_importance
    groups = dict(layers=list(parts.layers), norm=[parts.norm], head=[model.get_output_embeddings()])
    t = time.perf_counter(); c = time.process_time()
    with timed_modules(groups) as spent:
        r = layer_importance(model, data, n, engine=engine, progress=False)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    return r, dict(engine=engine, wall_s=wall, cpu_s=cpu, layers_s=spent["layers"], norm_head_s=spent["norm"] + spent["head"],
                   other_s=wall - spent["layers"] - spent["norm"] - spent["head"], layer_passes=r.stats.get("layer_passes"),
                   head_passes=r.stats.get("head_passes"), deleted_layers=r.deleted_layers)


def main(argv=None):
    from depthprune_nb.data import get_calib_eval_datasets
    from depthprune_nb.io.load import load_model_and_tokenizer
    from depthprune_nb.parts import locate
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="gemma-3-270m")
    p.add_argument("--n", type=int, default=2)
    p.add_argument("--windows", type=int, default=2)
    p.add_argument("--seqlen", type=int, default=128)
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    if a.quick:
        from depthprune_nb.testing import save_tiny_gguf
        src = save_tiny_gguf(Path(tempfile.mkdtemp()) / "tiny.gguf"); a.model, a.seqlen = "tiny-llama", 32
    else: src = gguf_file(a.model)
    model, tok = load_model_and_tokenizer(src, dtype=torch.float32)
    parts = locate(model)
    data, _ = get_calib_eval_datasets(None, "cpu", a.seqlen, text_file=TEXT_FILE, tokenizer=tok, nsamples=a.windows, eval_nsamples=1)
    head = model.get_output_embeddings().weight
    per_layer = sum(p.numel() for p in parts.layers[0].parameters())
    out = dict(model=a.model, n=a.n, windows=len(data), seqlen=a.seqlen, layers=parts.num_layers,
               head_params=head.numel(), layer_params=per_layer, head_in_layers=head.numel() / per_layer,
               load_average_start=os.getloadavg())
    ref, out["reference"] = one(model, parts, data, a.n, "reference")
    fast, out["fast"] = one(model, parts, data, a.n, "fast")
    out["max_rel_diff"] = max(abs(fast.ppl_by_start[s] / ref.ppl_by_start[s] - 1) for s in ref.ppl_by_start)
    out["same_pick"] = fast.deleted_layers == ref.deleted_layers
    out["speedup_wall"] = out["reference"]["wall_s"] / out["fast"]["wall_s"]
    out["speedup_cpu"] = out["reference"]["cpu_s"] / out["fast"]["cpu_s"]
    out["load_average_end"] = os.getloadavg()
    print(json.dumps(out, indent=1))
    res = ROOT / "bench" / "results"; res.mkdir(exist_ok=True)
    if not a.quick:
        with open(res / "bench_head.jsonl", "a") as f: f.write(json.dumps(out) + "\n")
    return out


if __name__ == "__main__": main()
