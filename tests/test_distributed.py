"`torchrun -m depthprune_nb.cli`: two processes (gloo, loopback) and two 'nodes' give the one-process table."
import json, os, socket, subprocess, sys
from pathlib import Path

import pytest

TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2-raw-v1" / "test.txt"
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
    from depthprune_nb.cli import main  # one process: in this one
    assert main([*map(str, args), "--result_json", str(base / "one.json")]) == 0
    return args, json.loads((base / "one.json").read_text()), base


def same_table(one, many):
    a, b = one["ppl_by_start"], many["ppl_by_start"]
    assert a.keys() == b.keys()
    for k in a: assert abs(b[k] / a[k] - 1) <= 1e-6, (k, a[k], b[k])
    assert abs(many["baseline_ppl"] / one["baseline_ppl"] - 1) <= 1e-6
    assert one["deleted_layers"] == many["deleted_layers"]


@needs_text
def test_two_processes_give_the_one_process_table(setup, tmp_path):
    args, one, _ = setup
    out, save = tmp_path / "two.json", tmp_path / "pruned"
    r = subprocess.run(torchrun("--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={free_port()}",
                                args=[*args, "--result_json", out, "--save_dir", save]),
                       capture_output=True, text=True, timeout=300, env=env())
    assert r.returncode == 0, r.stderr[-3000:]
    two = json.loads(out.read_text())
    same_table(one, two)
    assert two["stats"]["world_size"] == 2 and two["stats"]["passes_are_per_rank"]
    assert r.stdout.count("<- best") == 1, "rank 0 alone prints the table"
    assert (save / "model.safetensors").exists() and (save / "prune_result.json").exists()


@needs_text
def test_two_nodes_give_the_one_process_table(setup, tmp_path):
    args, one, _ = setup
    port, out = free_port(), tmp_path / "nodes.json"
    procs = [subprocess.Popen(torchrun("--nnodes=2", f"--node_rank={r}", "--nproc_per_node=1", "--master_addr=127.0.0.1",
                                       f"--master_port={port}", args=[*args, "--result_json", out]),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env()) for r in (0, 1)]
    try:
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None: p.kill()
    for p, (o, e) in zip(procs, outs): assert p.returncode == 0, e[-3000:]
    same_table(one, json.loads(out.read_text()))
    assert "<- best" in outs[0][0] and "<- best" not in outs[1][0]


@needs_text
def test_what_does_not_run_distributed_is_refused(setup):
    args, _, _ = setup
    r = subprocess.run(torchrun("--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={free_port()}",
                                args=[*args, "--early_abort"]), capture_output=True, text=True, timeout=300, env=env())
    assert r.returncode != 0 and "--early_abort does not run on several processes yet" in r.stderr
