"""Healing speed: the cached, only-what's-trained KD loop of `heal` against a plain loop, on the same model, data,
trained layers, steps and thread count, in one process.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python bench/bench_heal.py                 # SmolLM2-135M, layers 13-14 deleted
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python bench/bench_heal.py --windows 2 --epochs 1 --seqlen 64 --train last_k  # quick

The plain loop is what healing costs without the caches: every step runs the teacher's forward, the student's full
forward (the frozen layers included) and the backward, with the same trained layers, loss (top-k KL) and optimizer.
`heal` runs the teacher once per window before training, records the states entering the lowest trained layer, and each
step runs only the trained layers and the head. Both see the windows in the same order (`--epochs` passes over
`--windows` windows of `--seqlen` tokens of the standard library's source), so their loss curves must agree.

Reports, per trained set: the training loop's tokens/s (steps x seqlen over the loop's wall time), the end-to-end tokens/s
(cache building included), the loss curves' largest relative difference, and the top-k KL's gap to the full KL on the
pruned model before healing. Prints one JSON object and appends it to bench/results/heal_bench.jsonl.

A recovery point (Qwen2.5-Coder-0.5B-Instruct, layers 10-11 deleted, KD on the standard library's source), then
HumanEval on the healed checkpoint with bench/humaneval_qwen.py, then the paired tests against the runs of the same
first problems in bench/results/humaneval_qwen05_full.json:

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python bench/bench_heal.py --recover /tmp/qwen05_kd_last2 --model qwen2.5-coder-0.5b-instruct \
        --deleted 10,11 --train last_k --windows 16 --epochs 2 --seqlen 256 --heldout 2 --lr 1e-5
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python bench/humaneval_qwen.py --model /tmp/qwen05_kd_last2 --limit 80 --styles chat \
        --batch_size 20 --max_new_tokens 256 --out bench/results/heal_qwen05_kd_humaneval.json
    PYTHONPATH=$PWD python bench/bench_heal.py --pair bench/results/heal_qwen05_kd_humaneval.json
"""
import argparse, copy, json, platform, statistics, time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def plain(student, teacher, windows, layers, steps, lr, top_k):
    "Teacher forward every step, full student forward and backward; only `layers` trained."
    from depthprune_nb.parts import locate
    from depthprune_nb.recover.kd import kd_loss, teacher_targets
    parts = locate(student)
    for p in student.parameters(): p.requires_grad_(False)
    params = [p for j in layers for p in parts.layers[j].parameters()]
    for p in params: p.requires_grad_(True)
    opt, losses, t0 = torch.optim.AdamW(params, lr=lr), [], time.perf_counter()
    student.train()
    for step in range(steps):
        ids = windows[step % len(windows)]
        with torch.no_grad(): target = teacher_targets(teacher(ids, use_cache=False).logits[0], 1.0, top_k)
        loss = kd_loss(student(ids, use_cache=False).logits[0], target, 1.0)
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True); losses.append(loss.item())
    return losses, time.perf_counter() - t0


@torch.no_grad()
def topk_gap(student, teacher, windows, ks):
    "How far below the full-vocabulary KL the top-k KL is, on the pruned model before healing (relative)."
    from depthprune_nb.recover.kd import kd_loss, teacher_targets
    out = {}
    for k in ks:
        full = trunc = 0.0
        for ids in windows:
            t, s = teacher(ids).logits[0], student(ids).logits[0]
            full += kd_loss(s, teacher_targets(t)).item(); trunc += kd_loss(s, teacher_targets(t, 1.0, k)).item()
        out[k] = 1 - trunc / full
    return out, full / len(windows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--deleted", default="13,14", help="layers to delete, original numbering")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--top_k", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--train", default="last_k,adjacent")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each loop, alternating which goes first; medians reported")
    ap.add_argument("--bf16", action="store_true", help="also time the cached loop with the student in bfloat16 (heal's "
                    "compute_dtype='bfloat16'; the float32 loops are the baseline) and record what compute_dtype='auto' decides")
    ap.add_argument("--compute_dtype", default="float32", help="--recover: heal's compute_dtype (float32, bfloat16 or auto)")
    ap.add_argument("--recover", default=None, help="heal once (--train, KD on code) and save the healed checkpoint in this folder")
    ap.add_argument("--repair_init", action="store_true", help="--recover with --train adjacent: fold the linear repair fitted "
                    "on the unpruned model into the layer before the cut first (patch does by default)")
    ap.add_argument("--student_from", default=None, help="--recover: start from this healed checkpoint (--deleted already "
                    "deleted) instead of deleting from the teacher; with --heal_on student_chat its own answers are the text")
    ap.add_argument("--heldout", type=int, default=2, help="--recover: held-out windows for the running KL")
    ap.add_argument("--heal_on", default="code", choices=("code", "self", "self_chat", "student_chat"),
                    help="--recover: train on the standard library's source, or on the teacher's own greedy continuations "
                         "of function signatures and docstrings from it (`self_prompts`); self_chat: the same prompts asked "
                         "through the chat template as HumanEval's chat style asks; student_chat: the same asks answered by the pruned "
                         "model (heal_on='code_chat_student', on-policy KD); held-out windows are code either way")
    ap.add_argument("--record", default=None, help="--recover: where the healing record goes (default "
                    "bench/results/heal_recover_<model>_<train>.json)")
    ap.add_argument("--pair", default=None, help="a humaneval_qwen.py result file of a healed checkpoint: add its paired tests")
    a = ap.parse_args()
    if a.pair: return pair(a.pair)
    if a.recover: return recover(a)
    torch.set_num_threads(1)
    from depthprune_nb.io.models import load_real_model
    from depthprune_nb.calib import code_text
    from depthprune_nb.data import text_windows
    from depthprune_nb.surgery import delete_layers
    from depthprune_nb.recover.heal import heal
    from depthprune_nb.recover.kd import trained_layers
    teacher, tok = load_real_model(a.model)
    teacher.eval()
    deleted = [int(x) for x in a.deleted.split(",")]
    windows = text_windows(tok, code_text(), a.seqlen, "auto", progress=False)[:a.windows]
    steps = a.windows * a.epochs
    gaps, full_kl = topk_gap(delete_layers(copy.deepcopy(teacher), deleted), teacher, windows[:2], (16, 64, 256))
    rec = dict(bench="heal", model=a.model, deleted=deleted, windows=a.windows, epochs=a.epochs, steps=steps, seqlen=a.seqlen, repeats=a.repeats,
               top_k=a.top_k, lr=a.lr, threads=torch.get_num_threads(), torch=torch.__version__, machine=platform.processor() or platform.machine(),
               kl_full_before=full_kl, topk_gap_before={str(k): v for k, v in gaps.items()}, runs=[])
    for train in a.train.split(","):
        kw = dict(last_k=2) if train == "last_k" else dict(deleted=deleted)
        layers = trained_layers(train, teacher.config.num_hidden_layers - len(deleted), kw.get("deleted"), kw.get("last_k", 2))
        tokens, times = steps * a.seqlen, dict(cached=[], cached_loop=[], plain=[], bf16=[], bf16_loop=[])
        order = ("cached", "plain") + (("bf16",) if a.bf16 else ())
        for rep in range(a.repeats):  # the loops alternate (each goes first in turn): the machine's load falls on all
            for which in order[rep % len(order):] + order[:rep % len(order)]:
                student = delete_layers(copy.deepcopy(teacher), deleted)
                t0 = time.perf_counter()
                if which == "cached":
                    _, info = heal(student, windows, steps=steps, lr=a.lr, objective="kd", teacher=teacher, train=train,
                                   top_k=a.top_k, progress=False, compute_dtype=None, **kw)
                    times["cached"].append(time.perf_counter() - t0); times["cached_loop"].append(tokens / info["tokens_per_s"])
                elif which == "bf16":
                    _, binfo = heal(student, windows, steps=steps, lr=a.lr, objective="kd", teacher=teacher, train=train,
                                    top_k=a.top_k, progress=False, compute_dtype="bfloat16", **kw)
                    times["bf16"].append(time.perf_counter() - t0); times["bf16_loop"].append(tokens / binfo["tokens_per_s"])
                else:
                    ref, wall = plain(student, teacher, windows, layers, steps, a.lr, a.top_k)
                    times["plain"].append(wall)
                del student
        med = {k: statistics.median(v) for k, v in times.items() if v}
        diff = max(abs(x - y) / abs(y) for x, y in zip(info["losses"], ref))
        run = dict(train=train, trained_layers=layers, trainable_params=info["trainable_params"], repeats=a.repeats,
                   wall_s=times, cached_loop_tok_s=tokens / med["cached_loop"], cached_end_to_end_tok_s=tokens / med["cached"],
                   cache_build_s=med["cached"] - med["cached_loop"], plain_tok_s=tokens / med["plain"],
                   loop_speedup=med["plain"] / med["cached_loop"], end_to_end_speedup=med["plain"] / med["cached"],
                   loss_curve_max_rel_diff=diff, first_loss=info["losses"][0], last_loss=info["losses"][-1],
                   teacher_cache_mib=info["teacher_cache_mib"], state_cache_mib=info["state_cache_mib"],
                   losses_cached=info["losses"], losses_plain=ref)
        if a.bf16:
            from depthprune_nb.recover.heal import _heal_dtype
            from depthprune_nb.parts import locate
            run.update(bf16_loop_tok_s=tokens / med["bf16_loop"], bf16_loop_speedup_vs_float32=med["cached_loop"] / med["bf16_loop"],
                       bf16_end_to_end_speedup_vs_float32=med["cached"] / med["bf16"], bf16_last_loss=binfo["losses"][-1],
                       bf16_loss_curve_max_rel_diff=max(abs(x - y) / abs(y) for x, y in zip(binfo["losses"], info["losses"])),
                       auto_decides=_heal_dtype(teacher, locate(teacher), "auto")[1], losses_bf16=binfo["losses"])
        rec["runs"].append(run)
        print(json.dumps({k: v for k, v in run.items() if not k.startswith("losses")}), flush=True)
    out = ROOT / "bench" / "results" / "heal_bench.jsonl"
    with out.open("a") as f: f.write(json.dumps(rec) + "\n")
    print(json.dumps({k: v for k, v in rec.items() if k != "runs"}))


def recover(a):
    "Delete --deleted, heal with KD on --heal_on's text (--train, --windows x --epochs steps), save the checkpoint."
    torch.set_num_threads(1)
    from depthprune_nb.io.models import load_real_model
    from depthprune_nb.io.gguf import serializable
    from depthprune_nb.calib import code_text
    from depthprune_nb.data import text_windows
    from depthprune_nb.surgery import delete_layers
    from depthprune_nb.recover.heal import heal
    from depthprune_nb.recover.kd import heal_text
    t0 = time.perf_counter()
    teacher, tok = load_real_model(a.model)
    deleted = [int(x) for x in a.deleted.split(",")]
    code = text_windows(tok, code_text(), a.seqlen, "auto", progress=False)
    if a.student_from:  # a healed checkpoint (the same layers deleted) heals again: a second on-policy round
        from transformers import AutoModelForCausalLM
        student = AutoModelForCausalLM.from_pretrained(a.student_from, dtype=torch.float32).eval()
        if student.config.num_hidden_layers != teacher.config.num_hidden_layers - len(deleted):
            raise SystemExit(f"--student_from {a.student_from}: {student.config.num_hidden_layers} layers, not "
                             f"{teacher.config.num_hidden_layers} - {len(deleted)} (--deleted {a.deleted})")
    else: student = delete_layers(copy.deepcopy(teacher), deleted)
    # self_chat: the package's heal_on="code_chat" text; student_chat: heal_on="code_chat_student" (the pruned model answers)
    source = {"self": "self", "self_chat": "code_chat", "student_chat": "code_chat_student"}.get(a.heal_on)
    train = code if source is None else text_windows(tok, heal_text(source, tok, teacher, student=student, progress=True),
                                                     a.seqlen, "auto", progress=False)
    if len(train) < a.windows: raise SystemExit(f"--windows {a.windows}: the {a.heal_on} text makes only {len(train)} windows")
    windows = train[:a.windows] + code[-a.heldout:]  # held-out windows from the far end of the code text
    kw = dict(last_k=2) if a.train == "last_k" else dict(deleted=deleted)
    healed, info = heal(student, windows, steps=a.windows * a.epochs, lr=a.lr, objective="kd", teacher=teacher, train=a.train,
                        compute_dtype=None if a.compute_dtype == "float32" else a.compute_dtype,
                        top_k=a.top_k, heldout=a.heldout, eval_every=10, progress=True,
                        **({"repair_init": True} if a.repair_init else {}), **kw)
    out = Path(a.recover); out.mkdir(parents=True, exist_ok=True)
    with serializable(healed): healed.save_pretrained(out)
    tok.save_pretrained(out)
    data = {"code": "Python standard-library source (depthprune_nb.calib.code_text)",
            "self": "the unpruned model's greedy continuations of depthprune_nb.recover.kd.self_prompts() (heal_text('self'))",
            "self_chat": "the unpruned model's greedy answers to self_prompts() asked through the chat template as HumanEval's "
                         "chat style asks (heal_text('code_chat'), calib.code_chat_text)",
            "student_chat": "the pruned model's own greedy answers to the code_chat asks, before healing, scored by the "
                            "unpruned model (heal_text('code_chat_student'))"}[a.heal_on]
    rec = dict(model=a.model, deleted=deleted, data=data, student_from=a.student_from, heal_on=a.heal_on, train_windows_available=len(train),
               threads=torch.get_num_threads(), torch=torch.__version__, total_wall_s=time.perf_counter() - t0,
               **{k: v for k, v in info.items() if k != "losses"}, losses=info["losses"])
    Path(a.record or ROOT / "bench" / "results" / f"heal_recover_{a.model}_{a.train}.json").write_text(json.dumps(rec, indent=1))
    print(json.dumps({k: v for k, v in rec.items() if k != "losses"}))


def pair(path):
    "Paired tests (exact McNemar) of the healed run in `path` against the unpruned and pruned runs of the same problems."
    from depthprune_nb.eval.tasks import paired_test
    d = json.loads(Path(path).read_text())
    (key, healed), = [(k, v) for k, v in d["runs"].items()]
    ref = json.loads((ROOT / "bench" / "results" / "humaneval_qwen05_full.json").read_text())["runs"]
    h, n = [x["passed"] for x in healed["results"]], healed["n"]
    ids = [x["task_id"] for x in healed["results"]]
    d["paired"] = {}
    for name in ("unpruned/chat", "pruned_n2/chat"):
        r = ref[name]["results"][:n]
        assert [x["task_id"] for x in r] == ids, f"{name}: other problems"
        base = [x["passed"] for x in r]
        d["paired"][f"healed vs {name}"] = dict(paired_test(base, h).record("passed", digits=4), base_passed=sum(base), healed_passed=sum(h))
    d["note"] = f"the run {key!r} is the healed checkpoint given as --model; bases from humaneval_qwen05_full.json, first {n} problems"
    Path(path).write_text(json.dumps(d, indent=1))
    print(json.dumps(d["paired"], indent=1))


if __name__ == "__main__": main()
