"""Choose the default task suite by measurement on the unpruned real models (issue 16, item 2).

Rule: a BIG-bench task joins the suite when, on its first LIMIT examples (file order, zero-shot, the prompt rule of
`depthprune_nb.eval.tasks`), acc - chance > 3 * acc_stderr on EVERY model measured. The models are measured in order;
a task that fails on one model is not measured on the next (it cannot join any more). Nothing here looks at pruning.

    DEPTHPRUNE_BIGBENCH=../shared/data/bigbench OMP_NUM_THREADS=1 python bench/task_suite.py --limit 30 \
        --out nbs/task_suite.json

Models: SmolLM2-135M-Instruct, then Qwen2.5-Coder-0.5B-Instruct, both from `depthprune_nb.io.models` (--qwen: another GGUF). Results are
written after every task, and a rerun with the same --out and --limit skips what is already measured.

On a shared CPU the second model can run beside the first, gated by the first's file (it waits for each task's verdict
and measures only the tasks that passed), then the two files are merged:

    python bench/task_suite.py --limit 30 --models smollm2 --out nbs/task_suite.json &
    python bench/task_suite.py --limit 30 --models qwen --gate nbs/task_suite.json:smollm2 --out qwen.json
    python bench/task_suite.py --limit 30 --merge qwen.json --out nbs/task_suite.json
"""
import argparse, json, os, platform, time
from pathlib import Path

import torch

from depthprune_nb.engine.dtype_choice import machine_summary  # noqa: E402
from depthprune_nb.io.load import load_model_and_tokenizer
from depthprune_nb.io.models import gguf_path
from depthprune_nb.eval.tasks import evaluate_tasks, read_task, suite_names, bigbench_dir

REGISTRY = {"smollm2": "smollm2-135m-instruct", "qwen": "qwen2.5-coder-0.5b-instruct"}  # --models' short names
RULE = "acc - chance > 3 * acc_stderr on every model, first {limit} examples of each task (file order), zero-shot"


def cost(task:str, limit:int)->int:
    "Characters to score on the first `limit` examples (prompt + choice, per choice): cheap tasks are measured first."
    return sum(len(d["prompt"]) * len(d["choices"]) + sum(map(len, d["choices"])) for d in read_task(task, limit)["docs"])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--limit", type=int, default=30)
    p.add_argument("--out", default="nbs/task_suite.json")
    p.add_argument("--qwen", default=os.environ.get("DEPTHPRUNE_QWEN_GGUF"), help="a Qwen GGUF file (default: the registry's "
                   "qwen2.5-coder-0.5b-instruct, from its chunk packages)")
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--models", default="smollm2,qwen")
    p.add_argument("--gate", default=None, help="FILE:MODEL: measure only the tasks MODEL passed in FILE (waiting for its verdicts)")
    p.add_argument("--merge", default=None, help="add the models of this file to --out and recompute the suite")
    a = p.parse_args()
    if a.merge: return merge(Path(a.out), Path(a.merge))
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    out = Path(a.out)
    res = json.loads(out.read_text()) if out.exists() else {}
    if res.get("limit") not in (None, a.limit): raise SystemExit(f"{out} was measured with limit={res['limit']}, not {a.limit}")
    res.update(limit=a.limit, rule=RULE.format(limit=a.limit), data=str(bigbench_dir()),
               machine=f"{machine_summary()}, shared (see load averages)",
               command=f"OMP_NUM_THREADS=1 python bench/task_suite.py --limit {a.limit} --out {a.out}")
    res.setdefault("models", {})
    tasks = sorted(suite_names(), key=lambda t: cost(t, a.limit))
    paths = {n: Path(a.qwen) if n == "qwen" and a.qwen else gguf_path(REGISTRY[n]) for n in a.models.split(",")}
    alive = list(tasks)
    for name in a.models.split(","):
        m = res["models"].setdefault(name, {"file": Path(paths[name]).name, "tasks": {}})
        todo = [t for t in alive if t not in m["tasks"]]
        model = None
        for t in todo:
            if a.gate and not gate_passes(a.gate, t): continue
            if model is None:
                t0 = time.perf_counter(); model, tok = load_model_and_tokenizer(paths[name]); m["load_s"] = round(time.perf_counter() - t0, 1)
            t0 = time.perf_counter()
            r = evaluate_tasks(model, tok, [t], limit=a.limit, batch_size=a.batch_size)[t]
            r.update(wall_s=round(time.perf_counter() - t0, 1), load_avg=round(os.getloadavg()[0], 1),
                     margin_in_stderr=(r["acc"] - r["chance"]) / r["acc_stderr"] if r["acc_stderr"] > 0 else None,
                     passes=bool(r["acc"] - r["chance"] > 3 * r["acc_stderr"]))
            m["tasks"][t] = r
            print(name, t, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}, flush=True)
            out.write_text(json.dumps(res, indent=1) + "\n")
        alive = [t for t in alive if t in m["tasks"] and m["tasks"][t]["passes"]]
        del model
    res["suite"] = [t for t in tasks if all(res["models"].get(n, {}).get("tasks", {}).get(t, {}).get("passes") for n in a.models.split(","))]
    res["suite"].sort()
    out.write_text(json.dumps(res, indent=1) + "\n")
    print("suite:", res["suite"])


def gate_passes(gate:str, task:str, poll_s:int=30)->bool:
    "Whether `task` passed for the gating model in the gating file; waits until that file holds its verdict."
    f, model = gate.rsplit(":", 1)
    while True:
        try: r = json.loads(Path(f).read_text())["models"][model]["tasks"].get(task)
        except (OSError, ValueError, KeyError): r = None
        if r is not None: return r["passes"]
        time.sleep(poll_s)


def merge(out:Path, other:Path):
    "Add the models measured in `other` to `out` and recompute the suite over all models in it."
    res, more = json.loads(out.read_text()), json.loads(other.read_text())
    if res["limit"] != more["limit"]: raise SystemExit(f"limits differ: {res['limit']} vs {more['limit']}")
    res["models"].update(more["models"])
    first = next(iter(res["models"].values()))["tasks"]
    res["suite"] = sorted(t for t in first if all(m["tasks"].get(t, {}).get("passes") for m in res["models"].values()))
    res["command"] = ("OMP_NUM_THREADS=1 python bench/task_suite.py --limit {0} --out nbs/task_suite.json  "
                      "(run here as: --models smollm2; --models qwen --gate nbs/task_suite.json:smollm2 --out qwen.json; "
                      "--merge qwen.json)").format(res["limit"])
    out.write_text(json.dumps(res, indent=1) + "\n")
    print("suite:", res["suite"])


if __name__ == "__main__": main()
