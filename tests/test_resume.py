"A search killed (kill -9) or interrupted (Ctrl-C) at random points resumes to the uninterrupted table; other searches and damaged files are refused."
import multiprocessing as mp, os, random, signal, time

import pytest
import torch
from transformers import AutoModelForCausalLM

from depthprune_nb.engine.checkpoint import SearchCheckpoint, read_checkpoint
from depthprune_nb.config import ConfigError
from depthprune_nb import fast_search
from depthprune_nb.testing import save_tiny_model

SPAWN = mp.get_context("spawn")  # a fresh interpreter for each child: a fork of a process with threads can hang on a lock one held
N, CHUNK = 16, 1


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)  # the children run one thread: the parent matches them
    model = AutoModelForCausalLM.from_pretrained(save_tiny_model(tmp_path_factory.mktemp("m") / "l", family="llama",
                                                                 num_layers=6, init_std=0.3)).eval()
    data = [torch.randint(0, model.config.vocab_size, (1, 64), generator=torch.Generator().manual_seed(i)) for i in range(N)]
    return model, data, fast_search(model, data, 2, chunk_size=CHUNK, progress=False)


def child(model, data, folder):
    torch.set_num_threads(1)
    try: fast_search(model, data, 2, chunk_size=CHUNK, progress=False, checkpoint=SearchCheckpoint(folder, resume=True))
    except KeyboardInterrupt: os._exit(130)


def start(model, data, folder):
    p = SPAWN.Process(target=child, args=(model, data, folder)); p.start(); return p


def chunks_done(folder):
    path = folder / "search_state.json"
    return read_checkpoint(path)["state"]["chunks_done"] if path.exists() else 0  # never half-written: it always reads


def resume(model, data, folder):
    ck = SearchCheckpoint(folder, resume=True)
    return fast_search(model, data, 2, chunk_size=CHUNK, progress=False, checkpoint=ck), ck


def watch(p, folder, until=N, poll=0.002):
    "Poll `folder` while `p` runs until `until` chunks are saved; the times at which each new count was first seen."
    seen = {}
    while p.is_alive() and chunks_done(folder) < until:
        seen.setdefault(chunks_done(folder), time.perf_counter()); time.sleep(poll)
    return seen


def test_kill_9_at_five_random_points_then_resume(setup, tmp_path):
    model, data, whole = setup
    p = start(model, data, tmp_path / "timing"); seen = watch(p, tmp_path / "timing"); p.join(120)
    assert p.exitcode == 0 and chunks_done(tmp_path / "timing") == N
    counts = sorted(k for k in seen if k > 0)      # one chunk's time, measured between saves: process start-up is left out
    per_chunk = (seen[counts[-1]] - seen[counts[0]]) / max(counts[-1] - counts[0], 1)
    folder, rng = tmp_path / "ck", random.Random(0)
    targets = sorted(rng.sample(range(1, N - 4), 5))  # progress, not wall time, says when to kill: a run that starts
    seen = []                                           # faster than the timing run cannot finish before the last kill
    for target in targets:
        p = start(model, data, folder); watch(p, folder, until=target)
        time.sleep(rng.uniform(0, 1) * per_chunk)     # then a random point inside the next chunk (its save included)
        os.kill(p.pid, signal.SIGKILL); p.join(30)
        seen.append(chunks_done(folder))
    print("kill targets", targets, "chunks saved when each kill landed:", seen, "of", N)
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
    from depthprune_nb.cli.prune import main
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


# SLEB: finished rounds in sleb_state.json, the round in progress as the engine's own chunk checkpoint in round{r}/

import logging
from depthprune_nb.engine import core as engine  # the searches by name: SLEB calls its fast_search
from depthprune_nb.pruner import layer_importance
from depthprune_nb.criteria.sleb import sleb_search

SLEB_N, SLEB_CHUNK = 3, 2  # 3 rounds over 8 windows: 4 sample chunks a round


def stopping_engine(search, calls, in_round, after, stop):
    "The fast engine, its calls recorded; round `in_round` calls `stop()` once its checkpoint has saved `after` chunks."
    def fast_search(*args, checkpoint=None, **kw):
        calls.append(checkpoint)
        if checkpoint is not None and checkpoint.folder.name == f"round{in_round}":
            save = checkpoint.save
            def save_then_stop(done, *a, **k):
                save(done, *a, **k)
                if done == after: checkpoint.save = save; stop()  # once: Ctrl-C's own save goes through
            checkpoint.save = save_then_stop
        return search(*args, checkpoint=checkpoint, **kw)
    return fast_search


@pytest.fixture(scope="module")
def sleb_setup(setup):
    model, data, _ = setup
    return model, data[:8], sleb_search(model, data[:8], SLEB_N, chunk_size=SLEB_CHUNK, progress=False)


def sleb(model, data, folder, n=SLEB_N, resume=False, **kw):
    return sleb_search(model, data, n, chunk_size=SLEB_CHUNK, progress=False, checkpoint=SearchCheckpoint(folder, resume=resume), **kw)


def assert_same_sleb(got, want):
    "Same removal order, same PPLs and tables to the bit."
    for k in ("removal_order", "round_ppl", "round_tables"): assert got.stats[k] == want.stats[k], k
    assert (got.deleted_layers, got.baseline_ppl, got.best_ppl, got.scores) == (want.deleted_layers, want.baseline_ppl, want.best_ppl, want.scores)
    assert (got.runner_up_layers, got.runner_up_ppl) == (want.runner_up_layers, want.runner_up_ppl)


def sleb_child(model, data, folder):
    "Run SLEB and kill -9 this process once round 2 has saved 2 of its 4 chunks."
    torch.set_num_threads(1)
    engine.fast_search = stopping_engine(engine.fast_search, [], 2, 2, lambda: os.kill(os.getpid(), signal.SIGKILL))
    sleb(model, data, folder, resume=True)
    os._exit(0)


def test_sleb_killed_in_round_2_resumes_without_recomputing_round_1(sleb_setup, tmp_path, monkeypatch):
    model, data, whole = sleb_setup
    p = SPAWN.Process(target=sleb_child, args=(model, data, tmp_path)); p.start(); p.join(120)
    assert p.exitcode == -signal.SIGKILL
    assert len(read_checkpoint(tmp_path / "sleb_state.json")["state"]["rounds"]) == 1
    assert read_checkpoint(tmp_path / "round2" / "search_state.json")["state"]["chunks_done"] == 2
    calls = []
    monkeypatch.setattr(engine, "fast_search", stopping_engine(engine.fast_search, calls, None, None, None))
    res = sleb(model, data, tmp_path, resume=True)
    assert len(calls) == SLEB_N - 1, "round 1 is read back, not run again"
    assert calls[0].saves == 2, "round 2 runs only its last 2 chunks"
    assert res.stats["rounds_resumed"] == 1
    assert_same_sleb(res, whole)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sleb_state.json"], "finished rounds' chunk states are removed"


def test_sleb_ctrl_c_saves_says_how_to_resume_and_a_larger_n_reuses_the_rounds(sleb_setup, tmp_path, monkeypatch, caplog):
    model, data, whole = sleb_setup
    search, calls = engine.fast_search, []
    def ctrl_c(): raise KeyboardInterrupt
    monkeypatch.setattr(engine, "fast_search", stopping_engine(search, calls, 3, 1, ctrl_c))
    with caplog.at_level(logging.WARNING), pytest.raises(KeyboardInterrupt): sleb(model, data, tmp_path)
    assert "search interrupted after 1 of 4 sample chunks" in caplog.text           # the round's own message
    assert "SLEB interrupted in round 3 of 3: 2 finished round(s) saved" in caplog.text and "--resume" in caplog.text
    monkeypatch.setattr(engine, "fast_search", stopping_engine(search, calls, None, None, None)); calls.clear()
    assert_same_sleb(sleb(model, data, tmp_path, resume=True), whole)
    assert len(calls) == 1 and calls[0].saves == 3
    calls.clear()
    four = sleb(model, data, tmp_path, n=4, resume=True)  # the rounds are nested: the 3 saved ones are round 1-3 of n = 4
    assert len(calls) == 1 and four.stats["rounds_resumed"] == 3
    monkeypatch.setattr(engine, "fast_search", search)
    assert_same_sleb(four, sleb_search(model, data, 4, chunk_size=SLEB_CHUNK, progress=False))
    calls.clear()
    two = sleb(model, data, tmp_path, n=2, resume=True)   # fewer: read from the first 2, nothing run
    assert not calls and two.stats["removal_order"] == whole.stats["removal_order"][:2]
    assert len(read_checkpoint(tmp_path / "sleb_state.json")["state"]["rounds"]) == 4, "a smaller n keeps the saved rounds"


def test_sleb_checkpoint_of_another_search_is_refused(sleb_setup, tmp_path):
    model, data, _ = sleb_setup
    sleb(model, data, tmp_path, n=1)
    with pytest.raises(ConfigError, match="pass resume=True"): sleb(model, data, tmp_path, n=1)
    other = [d.clone() for d in data]; other[2][0, 9] = (other[2][0, 9] + 1) % model.config.vocab_size
    with pytest.raises(ConfigError, match="is of a different search: data changed"): sleb(model, other, tmp_path, resume=True)
    with pytest.raises(ConfigError, match="is of a different search: chunk_size changed"):
        sleb_search(model, data, 1, chunk_size=4, progress=False, checkpoint=SearchCheckpoint(tmp_path, resume=True))
    w = model.model.layers[0].self_attn.q_proj.weight
    with torch.no_grad():
        w[0, 0] += 0.5
        try:
            with pytest.raises(ConfigError, match="is of a different search: weights changed"): sleb(model, data, tmp_path, resume=True)
        finally: w[0, 0] -= 0.5
    with pytest.raises(ConfigError, match="holds a checkpoint of SLEB"):
        fast_search(model, data, 1, chunk_size=SLEB_CHUNK, progress=False, checkpoint=SearchCheckpoint(tmp_path, resume=True))
    fast_search(model, data, 1, chunk_size=SLEB_CHUNK, progress=False, checkpoint=SearchCheckpoint(tmp_path / "w"))
    with pytest.raises(ConfigError, match="holds a checkpoint of the window search"): sleb(model, data, tmp_path / "w", resume=True)


def test_what_cannot_be_checkpointed_is_refused_before_any_work(sleb_setup, tmp_path):
    model, data, _ = sleb_setup
    ck = SearchCheckpoint(tmp_path)
    for kw, msg in ((dict(method="sleb", engine="approx"), "exact fast engine only"),
                    (dict(method="sleb", early_abort=True), "with early_abort=True"),
                    (dict(method="sleb", compute_dtype="bfloat16"), "compute_dtype='bfloat16'"),
                    (dict(method="angular"), "method='angular' runs one forward pass"),
                    (dict(method="ppl_window", engine="reference"), "exact fast engine only")):
        with pytest.raises(ConfigError, match=msg): layer_importance(model, data, 2, progress=False, checkpoint=ck, **kw)
    assert not any(tmp_path.iterdir()), "nothing was written"


@pytest.mark.skipif(not TEXT.exists(), reason=f"WikiText-2 test text not found at {TEXT}")
def test_cli_sleb_checkpoint_dir_ctrl_c_and_resume(tmp_path, capsys, monkeypatch):
    import json
    from depthprune_nb.cli.prune import main
    model = save_tiny_model(tmp_path / "m", family="llama", num_layers=4)
    text = tmp_path / "t.txt"; text.write_text(TEXT.read_text()[:8000])
    args = ["--model_dir", str(model), "--text_file", str(text), "--delete_layer_num", "2", "--nsamples", "4",
            "--seqlen", "32", "--quiet", "--method", "sleb", "--checkpoint_dir", str(tmp_path / "ck")]
    assert main([*args[:-2], "--result_json", str(tmp_path / "whole.json")]) == 0
    search, calls = engine.fast_search, []
    def ctrl_c(): raise KeyboardInterrupt
    monkeypatch.setattr(engine, "fast_search", stopping_engine(search, calls, 2, 1, ctrl_c))
    assert main(args) == 130 and "add --resume to continue" in capsys.readouterr().err
    assert main(args) == 2 and "pass resume=True (--resume)" in capsys.readouterr().err  # never overwritten
    monkeypatch.setattr(engine, "fast_search", stopping_engine(search, calls, None, None, None)); calls.clear()
    assert main([*args, "--resume", "--result_json", str(tmp_path / "resumed.json")]) == 0
    assert len(calls) == 1, "round 1 is read back"
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("whole.json", "resumed.json"))
    for k in ("removal_order", "round_ppl", "round_tables"): assert a["stats"][k] == b["stats"][k], k
    assert a["deleted_layers"] == b["deleted_layers"] and a["baseline_ppl"] == b["baseline_ppl"]
    assert main([*args, "--resume", "--nsamples", "3"]) == 2 and "data, samples changed" in capsys.readouterr().err
    assert main([*args, "--engine", "approx"]) == 2 and "exact fast engine only" in capsys.readouterr().err
    assert main([*args, "--method", "block_influence"]) == 2 and "runs one forward pass" in capsys.readouterr().err
