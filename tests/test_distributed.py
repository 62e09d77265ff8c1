"torch.distributed: two processes (gloo, loopback) and two 'nodes' give the one-process result, for every search mode."
import json, os, socket, subprocess, sys
from pathlib import Path

import pytest

from conftest import WIKITEXT as TEXT
needs_text = pytest.mark.skipif(not TEXT.exists(), reason=f"WikiText-2 test text not found at {TEXT}")
ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--delete_layer_num", "2", "--nsamples", "6", "--seqlen", "48", "--quiet"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def env():
    e = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
             PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    e.pop("RANK", None); e.pop("WORLD_SIZE", None)
    return e


def torchrun(*launcher, args):
    return [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "depthprune_nb.cli", *map(str, args)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    "A tiny Llama with structure (init_std), a short text, and the one-process result."
    from depthprune_nb.testing import save_tiny_model
    base = tmp_path_factory.mktemp("dist")
    model = save_tiny_model(base / "llama", family="llama", num_layers=6, init_std=0.3)
    text = base / "text.txt"
    text.write_text(TEXT.read_text()[:20000])
    args = ["--model_dir", model, "--text_file", text, *FLAGS]
    from depthprune_nb.cli.prune import main  # one process: in this one
    assert main([*map(str, args), "--result_json", str(base / "one.json")]) == 0
    return args, json.loads((base / "one.json").read_text()), base


def same_table(one, many):
    a, b = one["ppl_by_start"], many["ppl_by_start"]
    assert a.keys() == b.keys()
    for k in a: assert abs(b[k] / a[k] - 1) <= 1e-6, (k, a[k], b[k])
    assert abs(many["baseline_ppl"] / one["baseline_ppl"] - 1) <= 1e-6
    assert one["deleted_layers"] == many["deleted_layers"]


@needs_text
def test_two_nodes_give_the_one_process_table(setup, tmp_path):
    "Two torchrun invocations (--nnodes=2) meeting at 127.0.0.1 run `depthprune`: the one-process table; rank 0 alone reports and saves."
    args, one, _ = setup
    port, out, save = free_port(), tmp_path / "nodes.json", tmp_path / "pruned"
    procs = [subprocess.Popen(torchrun("--nnodes=2", f"--node_rank={r}", "--nproc_per_node=1", "--master_addr=127.0.0.1",
                                       f"--master_port={port}", args=[*args, "--result_json", out, "--save_dir", save]),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env()) for r in (0, 1)]
    try:
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None: p.kill()
    for p, (o, e) in zip(procs, outs): assert p.returncode == 0, e[-3000:]
    many = json.loads(out.read_text())
    same_table(one, many)
    assert many["stats"]["world_size"] == 2 and many["stats"]["passes_are_per_rank"]
    assert "<- best" in outs[0][0] and "<- best" not in outs[1][0], "rank 0 alone prints the table"
    assert (save / "model.safetensors").exists() and (save / "prune_result.json").exists()


def test_exact_early_abort_and_approx_on_two_processes(tmp_path):
    "Every mode gives the one-process table, pick, lower bounds and estimates; each rank does about half the layer passes (head_bound: the same answer)."
    import torch
    from depthprune_nb.testing import save_tiny_model
    sys.path.insert(0, str(Path(__file__).parent))
    from distributed_job import search_all, train
    model = save_tiny_model(tmp_path / "llama", family="llama", num_layers=6)
    threads = torch.get_num_threads(); torch.set_num_threads(1)
    try: train(str(model)); one = json.loads(json.dumps(search_all(str(model))))  # the same JSON round trip
    finally: torch.set_num_threads(threads)
    out = tmp_path / "two.json"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                        f"--master_port={free_port()}", str(Path(__file__).parent / "distributed_job.py"), str(model), str(out)],
                       capture_output=True, text=True, timeout=300, env=env())
    assert r.returncode == 0, r.stderr[-3000:]
    two = json.loads(out.read_text())
    print({m: (one[m]["pick"], one[m]["lower"], one[m]["estimated"], one[m]["layer_passes"], two[m]["layer_passes"]) for m in one})
    assert one["early_abort"]["lower"], "the test model should let early abort stop some window"
    for mode in ("exact", "early_abort", "approx"):
        a, b = one[mode], two[mode]
        assert a["table"].keys() == b["table"].keys()
        for k in a["table"]: assert abs(b["table"][k] / a["table"][k] - 1) <= 1e-6, (mode, k, a["table"][k], b["table"][k])
        assert abs(b["baseline"] / a["baseline"] - 1) <= 1e-6, mode
        assert (a["pick"], a["lower"], a["estimated"]) == (b["pick"], b["lower"], b["estimated"]), mode
        assert b["layer_passes"] <= a["layer_passes"] // 2 + a["layer_passes"] // 8, (mode, a["layer_passes"], b["layer_passes"])
    a, b = one["head_bound"], two["head_bound"]  # ranks keep no final states: their contenders are swept again, shared out
    assert (a["pick"], a["lower"]) == (b["pick"], b["lower"]) and abs(b["baseline"] / a["baseline"] - 1) <= 1e-6
    for k in a["table"]: assert abs(b["table"][k] / a["table"][k] - 1) <= 1e-6, ("head_bound", k, a["table"][k], b["table"][k])


@needs_text
@pytest.mark.parametrize("method", ["sleb", "block_influence"])
def test_criteria_on_two_processes_give_the_one_process_pick(setup, tmp_path, method):
    "`--method` under torchrun: SLEB's rounds share the samples (each an exact search) and agree with one process; a one-pass criterion runs whole on each rank and agrees too."
    args, _, base = setup
    from depthprune_nb.cli.prune import main
    assert main([*map(str, args), "--method", method, "--result_json", str(tmp_path / "one.json")]) == 0
    one = json.loads((tmp_path / "one.json").read_text())
    out = tmp_path / "two.json"
    r = subprocess.run(torchrun("--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={free_port()}",
                                args=[*args, "--method", method, "--result_json", out]),
                       capture_output=True, text=True, timeout=300, env=env())
    assert r.returncode == 0, r.stderr[-3000:]
    two = json.loads(out.read_text())
    assert (two["method"], two["deleted_layers"], two["runner_up_layers"]) == (one["method"], one["deleted_layers"], one["runner_up_layers"])
    for k in ("baseline_ppl", "runner_up_ppl", "eval_baseline_ppl", "eval_ppl", "eval_runner_up_ppl"):
        if one[k] is not None: assert abs(two[k] / one[k] - 1) <= 1e-6, (k, one[k], two[k])
    if method == "sleb":
        assert two["stats"]["removal_order"] == one["stats"]["removal_order"]
        assert two["stats"]["layer_passes"] <= one["stats"]["layer_passes"] // 2 + one["stats"]["layer_passes"] // 8
