"A search killed (kill -9) or interrupted (Ctrl-C) at random points resumes to the uninterrupted table; other searches and damaged files are refused."
import multiprocessing as mp, os, random, signal, time

import pytest
import torch
from transformers import AutoModelForCausalLM

from depthprune_nb.checkpoint import SearchCheckpoint, read_checkpoint
from depthprune_nb.config import ConfigError
from depthprune_nb.engine import fast_search
from depthprune_nb.testing import save_tiny_model

FORK = mp.get_context("fork")  # the child shares the loaded model: no second import of torch and transformers
N, CHUNK = 16, 1


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)  # the forked children run one thread (OpenMP is not fork-safe): the parent matches them
    model = AutoModelForCausalLM.from_pretrained(save_tiny_model(tmp_path_factory.mktemp("m") / "l", family="llama",
                                                                 num_layers=6, init_std=0.3)).eval()
    data = [torch.randint(0, model.config.vocab_size, (1, 64), generator=torch.Generator().manual_seed(i)) for i in range(N)]
    return model, data, fast_search(model, data, 2, chunk_size=CHUNK, progress=False)


def child(model, data, folder):
    torch.set_num_threads(1)
    try: fast_search(model, data, 2, chunk_size=CHUNK, progress=False, checkpoint=SearchCheckpoint(folder, resume=True))
    except KeyboardInterrupt: os._exit(130)


def start(model, data, folder):
    p = FORK.Process(target=child, args=(model, data, folder)); p.start(); return p


def chunks_done(folder):
    path = folder / "search_state.json"
    return read_checkpoint(path)["state"]["chunks_done"] if path.exists() else 0  # never half-written: it always reads


def resume(model, data, folder):
    ck = SearchCheckpoint(folder, resume=True)
    return fast_search(model, data, 2, chunk_size=CHUNK, progress=False, checkpoint=ck), ck


def test_kill_9_at_five_random_points_then_resume(setup, tmp_path):
    model, data, whole = setup
    t0 = time.perf_counter(); p = start(model, data, tmp_path / "timing"); p.join(120)
    took = time.perf_counter() - t0
    assert p.exitcode == 0 and chunks_done(tmp_path / "timing") == N
    folder, rng, seen = tmp_path / "ck", random.Random(0), []
    for _ in range(5):
        left = (N - chunks_done(folder)) / N  # kill within the first half of the time what is left would take,
        p = start(model, data, folder)        # so that on a fast machine the run still never finishes before the last kill
        time.sleep(rng.uniform(0.05, 0.5) * took * left)
        os.kill(p.pid, signal.SIGKILL); p.join(30)
        seen.append(chunks_done(folder))
    print("chunks saved when each kill landed:", seen, "of", N)
    assert seen == sorted(seen) and seen[-1] < N, f"progress after each kill: {seen}"
    res, ck = resume(model, data, folder)
    assert ck.saves == N - seen[-1], "only the chunks not yet saved are run again"
    assert res.ppl_by_start == whole.ppl_by_start and res.baseline_ppl == whole.baseline_ppl
    assert res.deleted_layers == whole.deleted_layers


def test_ctrl_c_saves_and_resumes(setup, tmp_path):
    model, data, whole = setup
    p = start(model, data, tmp_path)
    while chunks_done(tmp_path) < 3 and p.is_alive(): time.sleep(0.01)
    os.kill(p.pid, signal.SIGINT); p.join(60)
    assert p.exitcode in (130, 0)  # 0 only if the search ended before the signal arrived
    assert chunks_done(tmp_path) >= 3
    res, _ = resume(model, data, tmp_path)
    assert res.ppl_by_start == whole.ppl_by_start


def test_a_different_search_is_refused(setup, tmp_path):
    model, data, whole = setup
    fast_search(model, data[:4], 2, chunk_size=CHUNK, progress=False, checkpoint=SearchCheckpoint(tmp_path))
    other = [d.clone() for d in data[:4]]; other[2][0, 9] = (other[2][0, 9] + 1) % model.config.vocab_size
    with pytest.raises(ConfigError, match="is of a different search: data changed"):
        resume(model, other, tmp_path)
    with pytest.raises(ConfigError, match="pass resume=True"):
        fast_search(model, data[:4], 2, chunk_size=CHUNK, progress=False, checkpoint=SearchCheckpoint(tmp_path))
    w = model.model.layers[0].self_attn.q_proj.weight
    with torch.no_grad():
        w[0, 0] += 0.5
        try:
            with pytest.raises(ConfigError, match="weights changed"): resume(model, data[:4], tmp_path)
        finally: w[0, 0] -= 0.5


def test_a_damaged_checkpoint_is_refused(setup, tmp_path):
    model, data, _ = setup
    fast_search(model, data[:4], 2, chunk_size=CHUNK, progress=False, checkpoint=SearchCheckpoint(tmp_path))
    path = tmp_path / "search_state.json"
    good = path.read_text()
    for text, msg in ((good[:-40], "is corrupted"), (good.replace('"chunks_done": 4', '"chunks_done": 2'), "was edited or corrupted"),
                      ('{"format": "something else"}', "is not a version-1"), ("\x00\x01garbage", "is corrupted")):
        path.write_text(text)
        with pytest.raises(ConfigError, match=msg): resume(model, data[:4], tmp_path)


from conftest import WIKITEXT as TEXT


@pytest.mark.skipif(not TEXT.exists(), reason=f"WikiText-2 test text not found at {TEXT}")
def test_cli_checkpoint_dir_and_resume(tmp_path, capsys):
    import json
    from depthprune_nb.cli import main
    model = save_tiny_model(tmp_path / "m", family="llama", num_layers=4)
    text = tmp_path / "t.txt"; text.write_text(TEXT.read_text()[:8000])
    args = ["--model_dir", str(model), "--text_file", str(text), "--delete_layer_num", "1", "--nsamples", "4",
            "--seqlen", "32", "--quiet", "--checkpoint_dir", str(tmp_path / "ck")]
    assert main([*args, "--result_json", str(tmp_path / "a.json")]) == 0
    assert main(args) == 2 and "--resume" in capsys.readouterr().err       # a saved search is never overwritten
    assert main([*args, "--resume", "--result_json", str(tmp_path / "b.json")]) == 0
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert a["ppl_by_start"] == b["ppl_by_start"]
    assert main([*args, "--resume", "--nsamples", "3"]) == 2 and "data, samples changed" in capsys.readouterr().err
    assert main([*args, "--early_abort"]) == 2 and "exact fast engine only" in capsys.readouterr().err
    assert main(["--model_dir", str(model), "--resume"]) == 2 and "--resume needs --checkpoint_dir" in capsys.readouterr().err
