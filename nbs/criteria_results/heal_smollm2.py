"""Heal SmolLM2-135M-Instruct after pruning: LoRA on calibration windows, evaluation PPL before and after on
windows the fine-tune never saw (the same evaluation windows as compare_criteria.py: the end of the text).

Run from the repository root after compare_criteria.py (it reads which layers the exact search deleted):

    PYTHONPATH=$PWD python nbs/criteria_results/heal_smollm2.py

Needs `pip install peft`. Writes nbs/criteria_results/heal_smollm2.json.
"""
import argparse, json, os, time
from pathlib import Path

import torch

from depthprune_nb.data import get_calib_eval_datasets
from depthprune_nb.recover.heal import heal
from depthprune_nb.ppl import perplexity
from depthprune_nb.surgery import delete_layers
from depthprune_nb.data import shipped_wikitext

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--text_file", default=str(shipped_wikitext()))
    p.add_argument("--ns", type=int, nargs="+", default=[0, 2, 4],
                   help="layers removed (picks of the exact window search); 0: the unpruned model, the control")
    p.add_argument("--method", default="ppl_window", help="whose picks to heal, from smollm2.json")
    p.add_argument("--train_windows", type=int, default=32, help="training windows, from the start of the text")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(HERE / "heal_smollm2.json"))
    p.add_argument("--append", action="store_true", help="keep the rows already in --out")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from compare_criteria import load_smollm2  # same model, same loader
    comp = json.loads((HERE / "smollm2.json").read_text())
    meta, picks = comp["meta"], {r["n"]: r["deleted_layers"] for r in comp["rows"] if r["method"] == a.method}
    picks[0] = []  # the control: the same fine-tune on the unpruned model
    rows, t_start = json.loads(Path(a.out).read_text())["rows"] if a.append else [], time.perf_counter()
    for n in a.ns:
        model, tok = load_smollm2()
        train, held = get_calib_eval_datasets(None, "cpu", meta["seqlen"], text_file=a.text_file, tokenizer=tok,
                                              nsamples=a.train_windows, eval_nsamples=meta["eval_windows"])
        unpruned = perplexity(model, held)
        if picks[n]: delete_layers(model, picks[n])
        before = perplexity(model, held)
        model, info = heal(model, train, steps=a.steps, lr=a.lr, progress=False)
        after = perplexity(model, held)
        train_after = perplexity(model, train[:4])
        rows.append(dict(n=n, method=a.method, deleted_layers=picks[n], eval_unpruned_ppl=unpruned, eval_before_ppl=before,
                         eval_after_ppl=after, train_ppl_after_first4=train_after,
                         **{k: v for k, v in info.items() if k != "losses"}, losses=info["losses"]))
        print(f"n={n} {picks[n]}: eval PPL unpruned {unpruned:.2f}, pruned {before:.2f}, healed {after:.2f} "
              f"({info['wall_s']:.0f} s, loss {info['first_loss']:.3f} -> {info['last_loss']:.3f})", flush=True)
        Path(a.out).write_text(json.dumps(dict(meta=dict(seqlen=meta["seqlen"], train_windows=a.train_windows,
            train_from="the first windows of the text", eval_windows=meta["eval_windows"], eval_from="the last windows of the text",
            threads=a.threads, load_average=os.getloadavg(), total_wall_s=time.perf_counter() - t_start,
            note="shared 2-core machine: other jobs ran at the same time"), rows=rows), indent=1))


if __name__ == "__main__":
    main()
