"Run the three search modes with `distributed_search` (under torchrun, or alone) and write what they found as JSON."
import json, sys

import torch
from transformers import AutoModelForCausalLM

from depthprune_nb.engine import distributed, ranks
from depthprune_nb.testing import arithmetic_sequences, train_on_arithmetic


def train(model_dir:str, steps:int=60):
    "Train the tiny Llama in `model_dir` with the package's recipe (`testing.train_on_arithmetic`) and save it back."
    model, _ = train_on_arithmetic(AutoModelForCausalLM.from_pretrained(model_dir), steps)
    model.save_pretrained(model_dir)


def search_all(model_dir:str, N:int=16)->dict:
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    data = list(arithmetic_sequences(N, torch.Generator().manual_seed(0)).split(1))
    out = {}
    for name, kw in (("exact", {}), ("early_abort", dict(early_abort=True)), ("approx", dict(engine="approx")),
                     ("head_bound", dict(head_bound=True))):
        r = distributed.distributed_search(model, data, 2, progress=False, **kw)
        out[name] = dict(table=r.ppl_by_start, baseline=r.baseline_ppl, pick=r.deleted_layers, lower=r.lower_bound_starts,
                         estimated=r.estimated_starts, layer_passes=r.stats.layer_passes)
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    ranks.init_from_env()
    out = search_all(sys.argv[1])
    if ranks.is_main(): open(sys.argv[2], "w").write(json.dumps(out))
    ranks.finish()
