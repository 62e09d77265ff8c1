"""Write a healed checkpoint as GGUF and check that transformers reads it back as the healed model.

    PYTHONPATH=$PWD python bench/healed_gguf.py /work/kd/qwen05_kd_last2_49k --model qwen2.5-coder-0.5b-instruct --deleted 10,11

The checkpoint is a folder `bench_heal.py --recover` saved (its config carries `depthprune_healed`, with the trained
layers). `write_pruned_gguf` copies the source GGUF's kept blocks byte for byte and writes the tensors healing changed in
F32; the file is loaded back (`load_gguf_model`, dequantized to float32) and its logits on two windows of the standard
library's source are compared with the checkpoint's. Prints one JSON object and writes it to --out.
"""
import argparse, json, time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="a healed checkpoint folder (bench_heal.py --recover)")
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct", help="the registry model whose GGUF was pruned and healed")
    ap.add_argument("--deleted", default="10,11", help="the deleted layers, in the source file's numbering")
    ap.add_argument("--dst", default=None, help="the GGUF file to write (default: <checkpoint>/healed.gguf)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "healed_gguf_qwen05.json"))
    a = ap.parse_args(argv)
    from transformers import AutoModelForCausalLM
    from depthprune_nb.calib import code_text
    from depthprune_nb.data import text_windows
    from depthprune_nb.io.gguf import write_pruned_gguf, load_gguf_model, resolve_gguf, read_gguf
    from depthprune_nb.io.models import gguf_path
    from depthprune_nb.io.registry import MODELS
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(a.checkpoint, dtype=torch.float32).eval()
    src, deleted = gguf_path(a.model), [int(x) for x in a.deleted.split(",")]
    dst = Path(a.dst or Path(a.checkpoint) / "healed.gguf")
    t = time.perf_counter()
    write_pruned_gguf(src, dst, deleted, overwrite=True, model=model)
    write_s = time.perf_counter() - t
    back, tok = load_gguf_model(*resolve_gguf(dst))
    windows = text_windows(tok, code_text(), 256, "auto", progress=False)[-2:]
    with torch.no_grad():
        diffs = [(back(w).logits - model(w).logits).abs().max().item() for w in windows]
    r = read_gguf(dst)
    healed = list(r.get_field("depthprune.healed_tensors").contents())
    rec = dict(checkpoint=str(a.checkpoint), model=MODELS[a.model].name, deleted=deleted, source_bytes=Path(src).stat().st_size,
               written_bytes=dst.stat().st_size, healed_tensors=len(healed), healed_tensor_names=healed,
               healed_types=sorted({t.tensor_type.name for t in r.tensors if t.name in set(healed)}),
               trained_layers=model.config.depthprune_healed.get("trained_layers"), write_s=round(write_s, 1),
               max_abs_logit_diff=max(diffs), windows="the last 2 windows of 256 tokens of depthprune_nb.calib.code_text()")
    Path(a.out).write_text(json.dumps(rec, indent=1))
    print(json.dumps({k: v for k, v in rec.items() if k != "healed_tensor_names"}))


if __name__ == "__main__": main()
