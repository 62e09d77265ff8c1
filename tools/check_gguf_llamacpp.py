"""Does a pruned GGUF run in llama.cpp as the pruned model runs in transformers? Perplexity on the same tokens.

    python tools/check_gguf_llamacpp.py qwen2.5-coder-0.5b-instruct --delete 2 3 --seqlen 768

Needs llama-cpp-python (built from source, see engineering facts: CMAKE_ARGS without AVX-512/AMX on AVX2-only CPUs).
For a model with sliding-window layers (gemma3) it also writes a control file *without* the per-block flags, which
llama.cpp reads by its period: with windows longer than the sliding window, that one should disagree.
"""
import argparse, json, math, tempfile, time
from pathlib import Path

import numpy as np
import torch
from depthprune_nb.data import shipped_wikitext


def llamacpp_ppl(path:Path, windows:list, threads:int)->float:
    from llama_cpp import Llama
    n = max(len(w) for w in windows)
    llm = Llama(model_path=str(path), n_ctx=n + 8, n_batch=n + 8, logits_all=True, n_threads=threads, verbose=False)
    nlls = []
    for w in windows:
        llm.reset(); llm.eval(w)
        logits = np.asarray(llm.scores[:len(w)], dtype=np.float64)[:-1]
        logits -= logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        nlls.extend(-logp[np.arange(len(w) - 1), w[1:]])
    del llm
    return math.exp(float(np.mean(nlls)))


def torch_ppl(model, windows:list)->float:
    nlls = []
    with torch.inference_mode():
        for w in windows:
            ids = torch.tensor([w])
            logp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
            nlls.extend((-logp[torch.arange(len(w) - 1), ids[0, 1:]]).tolist())
    return math.exp(float(np.mean(nlls)))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name"); p.add_argument("--delete", type=int, nargs="+", default=[2, 3])
    p.add_argument("--seqlen", type=int, default=768); p.add_argument("--windows", type=int, default=1)
    p.add_argument("--start_char", type=int, default=400_000); p.add_argument("--threads", type=int, default=1)
    p.add_argument("--text_file", default=str(shipped_wikitext()))
    p.add_argument("--out", default=None, help="write the numbers as JSON here")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from depthprune_nb.io.models import load_real_model, gguf_path
    import depthprune_nb.io.gguf as G
    from depthprune_nb import delete_layers
    src = gguf_path(a.name)
    model, tok = load_real_model(a.name)
    text = Path(a.text_file).read_text()[a.start_char:]
    ids = tok(text, add_special_tokens=False).input_ids
    bos = [tok.bos_token_id] if tok.bos_token_id is not None and tok("a").input_ids[0] == tok.bos_token_id else []
    body = a.seqlen - len(bos)
    windows = [bos + ids[i * body:(i + 1) * body] for i in range(a.windows)]
    tmp = Path(tempfile.mkdtemp())
    res = dict(model=a.name, deleted=a.delete, seqlen=a.seqlen, windows=a.windows, bos=bool(bos))
    t = time.time()
    res["transformers_original"] = torch_ppl(model, windows)
    res["llamacpp_original"] = llamacpp_ppl(src, windows, a.threads)
    g = G.write_pruned_gguf(src, tmp / "pruned.gguf", a.delete)
    delete_layers(model, a.delete)
    res["transformers_pruned"] = torch_ppl(model, windows)
    res["llamacpp_pruned"] = llamacpp_ppl(g, windows, a.threads)
    r = G.read_gguf(src)
    arch = r.get_field("general.architecture").contents()
    if G.swa_layer_pattern(r, arch, r.get_field(f"{arch}.block_count").contents()) is not None:
        real = G.swa_layer_pattern
        G.swa_layer_pattern = lambda *args: None # the control: no per-block flags, llama.cpp falls back to its period
        try: c = G.write_pruned_gguf(src, tmp / "pruned-period.gguf", a.delete)
        finally: G.swa_layer_pattern = real
        res["llamacpp_pruned_period_control"] = llamacpp_ppl(c, windows, a.threads)
    for k in ("original", "pruned"):
        res[f"rel_diff_{k}"] = res[f"llamacpp_{k}"] / res[f"transformers_{k}"] - 1
    res["seconds"] = round(time.time() - t, 1)
    print(json.dumps(res, indent=1))
    if a.out: Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__": main()
