"""Train the demo model and store its search results for the plots and explorer notebooks.

    python bench/train_demo.py [--model_dir /work/demo_model] [--text_file ../shared/data/wikitext-2-raw-v1/test.txt]
                               [--out nbs/demo_results] [--ns 1 2 3 4 5 6] [--engine fast] [--retrain]

Trains `depthprune_nb.demo.train_demo_model` (skipped when `model_dir` already holds one, unless
--retrain), then runs `depthprune_nb.pruner.search_each_n` on the model's held-out text and writes one
`demo_search_n{n}.json` per window size into `--out`. Prints the training record and the tables.
"""
import argparse, json, logging, os, time
from pathlib import Path

import torch
from depthprune_nb.demo import train_demo_model, load_demo_model
from depthprune_nb.data import get_wikitext_dataset
from depthprune_nb.pruner import search_each_n

ROOT = Path(__file__).resolve().parents[1]

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model_dir", default=os.environ.get("DEPTHPRUNE_DEMO_DIR", "/work/demo_model"))
    p.add_argument("--text_file", default=str(ROOT.parent / "shared/data/wikitext-2-raw-v1/test.txt"))
    p.add_argument("--out", default=str(ROOT / "nbs/demo_results"))
    p.add_argument("--ns", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6])
    p.add_argument("--engine", default="fast")
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch threads for training (1 is faster on a busy machine)")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", force=True)
    if a.threads: torch.set_num_threads(a.threads)
    if a.retrain or not (Path(a.model_dir) / "demo_run.json").exists():
        print(train_demo_model(a.model_dir, a.text_file, progress=False, threads=a.threads))
    model, tok, run = load_demo_model(a.model_dir)
    print("demo model:", run)
    data = get_wikitext_dataset(a.model_dir, "cpu", seqlen=run.settings["seqlen"],
                                text_file=Path(a.model_dir) / "heldout.txt", tokenizer=tok, progress=False)
    t0 = time.perf_counter()
    results = search_each_n(model, data, a.ns, engine=a.engine)
    print(f"sweep over n={a.ns} on {len(data)} held-out windows: {time.perf_counter() - t0:.1f} s "
          f"({torch.get_num_threads()} threads)")
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    for n, r in results.items():
        r.model_name = "demo model (12-layer OPT, trained on CPU)"
        r.to_json(out / f"demo_search_n{n}.json")
        print(r, "\n")

if __name__ == "__main__": main()
