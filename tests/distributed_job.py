"Run the three search modes with `distributed_search` (under torchrun, or alone) and write what they found as JSON."
import json, sys

import torch
from transformers import AutoModelForCausalLM

from depthprune_nb.engine import distributed, ranks


def arithmetic(b:int, seed:int=0)->torch.Tensor:
    "`b` arithmetic sequences of 24 tokens: data a tiny model learns in seconds, making its layers matter unequally."
    g = torch.Generator().manual_seed(seed)
    start, stride = torch.randint(0, 64, (b, 1), generator=g), torch.randint(1, 6, (b, 1), generator=g)
    return (start + stride * torch.arange(24)) % 64 + 10


def train(model_dir:str, steps:int=60):
    "Train the tiny Llama in `model_dir` on arithmetic sequences and save it back."
    model = AutoModelForCausalLM.from_pretrained(model_dir).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for i in range(steps):
        x = arithmetic(16, seed=100 + i)
        loss = model(x, labels=x).loss
        opt.zero_grad(); loss.backward(); opt.step()
    model.eval().save_pretrained(model_dir)


def search_all(model_dir:str, N:int=16)->dict:
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    data = list(arithmetic(N).split(1))
    out = {}
    for name, kw in (("exact", {}), ("early_abort", dict(early_abort=True)), ("approx", dict(engine="approx")),
                     ("head_bound", dict(head_bound=True))):
        r = distributed.distributed_search(model, data, 2, progress=False, **kw)
        out[name] = dict(table=r.ppl_by_start, baseline=r.baseline_ppl, pick=r.deleted_layers, lower=r.lower_bound_starts,
                         estimated=r.estimated_starts, layer_passes=r.stats["layer_passes"])
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    ranks.init_from_env()
    out = search_all(sys.argv[1])
    if ranks.is_main(): open(sys.argv[2], "w").write(json.dumps(out))
    ranks.finish()
