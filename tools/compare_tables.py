"""Dump the search tables of the tiny test models, bit for bit, so that two checkouts can be compared.

    PYTHONPATH=<checkout> OMP_NUM_THREADS=1 python tools/compare_tables.py OUT.json
    python tools/compare_tables.py --diff A.json B.json      # exit 1 and list the differences if any

Every float is written as `float.hex`, so equal files mean bit-identical tables. Wall times, memory
figures and other measurements of the machine are left out; everything else a search returns is kept.
Only the package's top-level names are used, so the script runs on old and new checkouts alike."""
import json, math, sys, tempfile, warnings

MACHINE = ("wall_s", "peak_rss_bytes", "peak_device_bytes", "low_precision_wall_s", "eval_wall_s", "report_wall_s",
           "round_wall_s", "wall")  # keys that measure the run, not the search


def _plain(x):
    "JSON-able, floats as hex (bit-exact), machine measurements dropped."
    if isinstance(x, float): return x.hex() if math.isfinite(x) else repr(x)
    if isinstance(x, dict): return {str(k): _plain(v) for k, v in sorted(x.items(), key=lambda kv: str(kv[0]))
                                    if not any(str(k).endswith(m) for m in MACHINE)}
    if isinstance(x, (list, tuple)): return [_plain(v) for v in x]
    return x


def cases():
    "(name, thunk) pairs: every search the refactor touches, on several tiny families."
    import torch
    from transformers import AutoModelForCausalLM
    import depthprune_nb as dp
    from depthprune_nb.testing import save_tiny_model
    torch.manual_seed(0)
    tmp = tempfile.mkdtemp(prefix="compare_tables_")
    def load(family, layers=5, std=0.3, seed=0):
        path = save_tiny_model(f"{tmp}/{family}{layers}_{seed}", family=family, num_layers=layers, init_std=std, seed=seed)
        return AutoModelForCausalLM.from_pretrained(path).eval()
    def windows(model, k=6, seqlen=16, seed=0):
        g = torch.Generator().manual_seed(seed)
        return [torch.randint(0, model.config.vocab_size, (1, seqlen), generator=g) for _ in range(k)]
    out = []
    for family in ("llama", "opt", "gpt2", "gpt_bigcode", "qwen2", "gemma2"):
        try: model = load(family)
        except Exception as e: print(f"skip {family}: {e}", file=sys.stderr); continue
        data = windows(model)
        for n in (1, 2):
            out += [(f"{family} n={n} reference", lambda m=model, d=data, n=n: dp.reference_search(m, d, n, progress=False)),
                    (f"{family} n={n} fast", lambda m=model, d=data, n=n: dp.fast_search(m, d, n, chunk_size=4, progress=False)),
                    (f"{family} n={n} fast mix", lambda m=model, d=data, n=n: dp.fast_search(
                        m, d, n, save_gpu_memory=True, device="cpu", chunk_size=2, progress=False))]
        out += [(f"{family} approx", lambda m=model, d=data: dp.approx_search(m, d, 1, keep_exact=2, first_samples=1, progress=False)),
                (f"{family} angular", lambda m=model, d=data: dp.layer_importance(m, d, 2, method="angular", progress=False)),
                (f"{family} angular_all", lambda m=model, d=data: dp.layer_importance(m, d, 2, method="angular_all", progress=False)),
                (f"{family} block_influence", lambda m=model, d=data: dp.layer_importance(m, d, 2, method="block_influence", progress=False)),
                (f"{family} sleb", lambda m=model, d=data: dp.sleb_search(m, d, 2, progress=False)),
                (f"{family} layer_importance fast", lambda m=model, d=data: dp.layer_importance(m, d, 1, progress=False))]
    from depthprune_nb.testing import train_on_arithmetic
    torch.manual_seed(0)
    llama, seq = train_on_arithmetic(load("llama", layers=6))
    out += [("llama6 early abort", lambda: dp.fast_search(llama, seq, 1, early_abort=True, chunk_size=1, progress=False)),
            ("llama6 early abort no stash", lambda: dp.fast_search(llama, seq, 1, early_abort=True, chunk_size=1, memory_budget=1, progress=False)),
            ("llama6 early abort chunk 2", lambda: dp.fast_search(llama, seq, 2, early_abort=True, chunk_size=2, progress=False)),
            ("llama6 early abort n=2", lambda: dp.fast_search(llama, seq, 2, early_abort=True, chunk_size=1, progress=False)),
            ("llama6 bf16", lambda: dp.fast_search(llama, seq, 1, compute_dtype="bfloat16", progress=False)),
            ("llama6 fp16 approx", lambda: dp.approx_search(llama, seq, 1, compute_dtype="float16", keep_exact=2, progress=False)),
            ("llama6 bf16 early abort", lambda: dp.fast_search(llama, seq, 2, early_abort=True, chunk_size=1, compute_dtype="bfloat16", progress=False)),
            ("llama6 approx", lambda: dp.approx_search(llama, seq, 1, keep_exact=2, first_samples=2, progress=False)),
            ("llama6 bf16 mix", lambda: dp.fast_search(llama, seq, 1, compute_dtype="bfloat16", save_gpu_memory=True, device="cpu", chunk_size=3, progress=False)),
            ("llama6 reference bf16", lambda: dp.layer_importance(llama, seq, 1, engine="reference", compute_dtype="bfloat16", progress=False)),
            ("llama6 sleb approx", lambda: dp.sleb_search(llama, seq, 2, engine="approx", progress=False)),
            ("llama6 sleb bf16", lambda: dp.sleb_search(llama, seq, 2, compute_dtype="bfloat16", progress=False)),
            ("llama6 ModelPruner", lambda: _pruned(dp, llama, seq))]
    return out


def _pruned(dp, model, data):
    "ModelPruner on a copy of the model: the result it keeps."
    import copy
    p = dp.ModelPruner(dp.LayerImportancePruneConfig(delete_layer_num=2), progress=False)
    p.pruning_model(copy.deepcopy(model), data)
    return p.result


def dump(path):
    import torch
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    tables = {}
    for name, run in cases():
        r = run()
        tables[name] = _plain(r.to_dict())
        print(f"{name}: {r.deleted_layers}", file=sys.stderr)
    with open(path, "w") as f: json.dump(tables, f, indent=1, sort_keys=True)
    print(f"{len(tables)} tables written to {path}")


def diff(a, b)->int:
    A, B = json.load(open(a)), json.load(open(b))
    bad = sorted(set(A) ^ set(B)) + [k for k in sorted(set(A) & set(B)) if A[k] != B[k]]
    for k in bad:
        if k not in A or k not in B: print(f"{k}: only in {'the first' if k in A else 'the second'}"); continue
        keys = sorted(set(A[k]) | set(B[k]))
        only = {f: "first" if f in A[k] else "second" for f in keys if (f in A[k]) != (f in B[k])}
        print(f"{k}: differs in {[f for f in keys if f not in only and A[k][f] != B[k][f]]}"
              + "".join(f"; {f!r} only in the {w}" for f, w in only.items()))
    print(f"{len(set(A) & set(B))} tables compared, {len(bad)} differ")
    return 1 if bad else 0


if __name__ == "__main__":
    if sys.argv[1] == "--diff": sys.exit(diff(sys.argv[2], sys.argv[3]))
    dump(sys.argv[1])
