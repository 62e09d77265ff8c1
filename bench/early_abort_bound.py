"""How much can early abort save on a given table? The best case, from a finished search's result JSON.

    python bench/early_abort_bound.py RESULT.json [RESULT.json ...]

Early abort stops a window once its partial NLL sum over the samples seen exceeds N * ln(PPL of the best window):
the only bound that holds whatever the unseen samples are is NLL >= 0. If a window's per-sample NLLs were all equal
to its mean m_w, it could be stopped after a fraction f_w = ln(PPL_best) / m_w = ln(PPL_best) / ln(PPL_w) of the
samples; nothing tighter is possible without a statistical (inexact) bound. This script weighs each window's saving
(1 - f_w) by its cost in the fast engine (the decoder layers it runs, L - start - n, plus one head pass, counted at
`--head_layers` layer-equivalents) and prints the best-case fraction of the exact table's work that early abort can
remove, beside the cost of scoring the proxy's favourite first. Real per-sample NLLs vary, and the engine checks
only at chunk boundaries, so measured savings are smaller.
"""
import argparse, json, math, sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from depthprune_nb.result import PruneResult  # noqa: E402


def bound(res:PruneResult, head_layers:float)->dict:
    L, n, best = res.num_layers_before, res.delete_layer_num, math.log(res.best_ppl)
    cost = {s: (L - s - n) + head_layers for s in res.ppl_by_start}
    total = L + head_layers + sum(cost.values())  # the unpruned stream + every window, per sample
    saved = 0.0
    for s, p in res.ppl_by_start.items():
        if s == res.best_start or not math.isfinite(p) or p <= res.best_ppl: continue
        saved += (1 - best / math.log(p)) * cost[s]
    earliest = {s: (best / math.log(p) if math.isfinite(p) and p > res.best_ppl else 1.0) for s, p in res.ppl_by_start.items()}
    return dict(saved_frac=saved / total, stoppable_after=earliest)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+")
    ap.add_argument("--head_layers", type=float, default=8.0, help="a head pass in decoder-layer equivalents (SmolLM2: about 8)")
    a = ap.parse_args()
    for f in a.results:
        r = PruneResult.from_json(f)
        b = bound(r, a.head_layers)
        print(f"{f}: n={r.delete_layer_num}, {r.num_layers_before} layers, best {r.best_ppl:.2f}: early abort can remove at "
              f"most {b['saved_frac']:.1%} of the exact table's work (head = {a.head_layers:g} layers)")
        print("  fraction of samples after which each window can be stopped at the earliest (start: fraction):")
        print("  " + ", ".join(f"{s}: {f:.2f}" for s, f in sorted(b["stoppable_after"].items())))
