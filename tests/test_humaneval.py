"""The HumanEval sandbox and scorer: canonical solutions pass, wrong ones fail, runaway programs are stopped, the file
system outside the scratch folder is left as it was, and nothing runs without the opt-in."""
import os, subprocess, sys, time
from pathlib import Path

import pytest

from depthprune_nb.eval import sandbox
from depthprune_nb.eval.humaneval import (check_completion, check_completions, extract_completion, read_problems,
                                     run_humaneval, humaneval_prompt, resolve_prompt_style)
from depthprune_nb.eval.sandbox import CodeExecutionRefused, run_program
from depthprune_nb.eval.confine import landlock_abi

from conftest import SHARED_DATA

HUMANEVAL = Path(os.environ.get("DEPTHPRUNE_HUMANEVAL", SHARED_DATA / "humaneval" / "HumanEval.jsonl.gz"))
if not HUMANEVAL.exists():  # a worktree one level deeper than the checkout: look above it too
    HUMANEVAL = next((p / "shared" / "data" / "humaneval" / "HumanEval.jsonl.gz" for p in Path(__file__).resolve().parents
                      if (p / "shared" / "data" / "humaneval" / "HumanEval.jsonl.gz").exists()), HUMANEVAL)
if not HUMANEVAL.exists():  # no project data beside the checkout: the copy shipped in the package
    from depthprune_nb.data import shipped
    HUMANEVAL = shipped("humaneval", "HumanEval.jsonl.gz")

TOY = {"task_id": "toy/0", "prompt": 'def add(a, b):\n    "Sum of a and b."\n', "entry_point": "add",
       "canonical_solution": "    return a + b\n", "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n"}
RUN = dict(allow_code_execution=True)


@pytest.fixture(scope="module")
def problems():
    if not HUMANEVAL.exists(): pytest.skip(f"HumanEval problems not found at {HUMANEVAL}")
    return read_problems(HUMANEVAL)


def test_all_canonical_solutions_pass(problems):
    t0 = time.monotonic()
    res = check_completions(problems, [p["canonical_solution"] for p in problems], workers=4, **RUN)
    failed = [(r["task_id"], r["result"]) for r in res if not r["passed"]]
    assert len(res) == 164 and not failed, f"canonical solutions that failed: {failed}"
    assert time.monotonic() - t0 < 120, "164 canonical solutions took over 2 minutes"


def test_wrong_completion_fails(problems):
    p = problems[0]
    r = check_completion(p, "    return not " + p["canonical_solution"].strip().splitlines()[-1].split("return ", 1)[1] + "\n", **RUN)
    assert not r["passed"] and r["result"].startswith("failed: AssertionError"), r
    assert not check_completion(TOY, "    return a - b\n", **RUN)["passed"]
    assert not check_completion(TOY, "    return (a +\n", **RUN)["passed"]  # a syntax error


def test_exiting_early_is_not_passing():
    "A program that exits with status 0 before its tests ran has not passed them."
    exits_before_check = TOY | {"test": "import sys; sys.exit(0)\n" + TOY["test"]}
    assert not check_completion(exits_before_check, TOY["canonical_solution"], **RUN)["passed"]
    for body in ("    import sys; sys.exit(0)\n", "    import os; os._exit(0)\n", "    raise SystemExit\n"):
        assert not check_completion(TOY, body, **RUN)["passed"], body


def test_endless_loop_stopped_within_limit():
    for body in ("    while True: pass\n", "    import time\n    time.sleep(60)\n"):
        t0 = time.monotonic()
        r = check_completion(TOY, body, timeout=2, **RUN)
        assert not r["passed"] and time.monotonic() - t0 < 2 + 5, (body, r)
    assert check_completion(TOY, TOY["canonical_solution"], **RUN)["passed"]  # the caller is fine afterwards


def test_memory_bomb_stopped_within_limit():
    for body in ("    x = [0] * (10 ** 10)\n", "    s = []\n    while True: s.append(' ' * 10 ** 6)\n",
                 "    s = 'x'\n    while True: s = s + s\n"):
        t0 = time.monotonic()
        r = check_completion(TOY, body, timeout=5, memory_mb=256, **RUN)
        assert not r["passed"] and time.monotonic() - t0 < 5 + 5, (body, r)
    assert check_completion(TOY, TOY["canonical_solution"], **RUN)["passed"]


def _leaves_alone(tmp_path, body):
    victim = tmp_path / "victim.txt"; victim.write_text("keep me")
    folder = tmp_path / "folder"; folder.mkdir(); (folder / "inner.txt").write_text("keep me too")
    before = sorted((str(p), p.read_bytes() if p.is_file() else None) for p in tmp_path.rglob("*"))
    r = check_completion(TOY, body.format(victim=str(victim), folder=str(folder), marker=str(tmp_path / "marker")), **RUN)
    after = sorted((str(p), p.read_bytes() if p.is_file() else None) for p in tmp_path.rglob("*"))
    assert after == before, f"the file system changed: {body!r} -> {r}"
    return r


@pytest.mark.parametrize("body", [
    "    import os; os.remove({victim!r})\n    return a + b\n",
    "    import os; os.unlink({victim!r})\n    return a + b\n",
    "    import pathlib; pathlib.Path({victim!r}).unlink()\n    return a + b\n",
    "    import posix; posix.unlink({victim!r})\n    return a + b\n",
    "    import os; os.rename({victim!r}, {victim!r} + '.moved')\n    return a + b\n",
    "    import shutil; shutil.rmtree({folder!r})\n    return a + b\n",
    "    import shutil; shutil.move({folder!r}, {folder!r} + '2')\n    return a + b\n",
])
def test_deleting_outside_scratch_leaves_files(tmp_path, body):
    r = _leaves_alone(tmp_path, body)
    assert not r["passed"] and "PermissionError" in r["result"], r


@pytest.mark.parametrize("body", [
    "    import subprocess; subprocess.run(['touch', {marker!r}])\n    return a + b\n",
    "    import os; os.system('touch ' + {marker!r})\n    return a + b\n",
    "    import os; os.posix_spawn('/usr/bin/touch', ['touch', {marker!r}], {{}})\n    return a + b\n",
    "    import os\n    if os.fork() == 0: open({marker!r}, 'w').close()\n    return a + b\n",
    "    import os; os.execv('/usr/bin/touch', ['touch', {marker!r}])\n",
])
def test_starting_a_process_leaves_files(tmp_path, body):
    r = _leaves_alone(tmp_path, body)
    assert not r["passed"], r


@pytest.mark.skipif(landlock_abi() < 1, reason="the kernel offers no Landlock: writes outside the scratch folder are not confined")
@pytest.mark.parametrize("body", [
    "    open({victim!r}, 'w').close()\n    return a + b\n",                       # truncation by open
    "    open({folder!r} + '/new.txt', 'w').write('x')\n    return a + b\n",        # a new file outside
    "    import ctypes; assert ctypes.CDLL(None).unlink({victim!r}.encode()) == 0\n    return a + b\n",  # libc, past the guard
    "    import ctypes; assert ctypes.CDLL(None).system(('touch ' + {marker!r}).encode()) == 0\n    return a + b\n",
])
def test_landlock_confines_what_the_guard_cannot(tmp_path, body):
    r = _leaves_alone(tmp_path, body)
    assert not r["passed"], r


def test_scratch_folder_is_usable_and_removed():
    r = run_program("import os\nopen('a.txt', 'w').write('x')\nos.mkdir('d')\nprint(os.getcwd())\n"
                    "assert os.environ.get('HOME') == os.getcwd() and 'PYTHONPATH' not in os.environ", **RUN)
    assert r["passed"], r
    assert r["status"]["limits"]["RLIMIT_AS"] == 1024 << 20


def test_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "secret-token-value")
    assert run_program("import os\nassert 'HF_TOKEN' not in os.environ and not any('secret' in v for v in os.environ.values())", **RUN)["passed"]


class _Spy:
    "Records every process start; the real Popen is never called."
    def __init__(self): self.calls = []
    def __call__(self, *a, **k): self.calls.append(a); raise AssertionError("a process was started")


def test_no_opt_in_nothing_runs(tmp_path, monkeypatch):
    spy = _Spy()
    monkeypatch.setattr(subprocess, "Popen", spy)
    monkeypatch.setattr(sandbox.subprocess, "Popen", spy)
    marker = tmp_path / "marker"
    body = f"    open({str(marker)!r}, 'w').close()\n    return a + b\n"
    for call in (lambda: check_completion(TOY, body), lambda: check_completion(TOY, body, allow_code_execution="yes"),
                 lambda: check_completions([TOY], [body]), lambda: run_program(f"open({str(marker)!r}, 'w')"),
                 lambda: run_humaneval(None, None, problems=[TOY])):
        with pytest.raises(CodeExecutionRefused, match="--allow_code_execution"): call()
    assert not spy.calls and not marker.exists()


def test_run_humaneval_refuses_before_generating(tiny_model_and_tokenizer, monkeypatch):
    model, tok = tiny_model_and_tokenizer
    monkeypatch.setattr(model, "generate", lambda *a, **k: (_ for _ in ()).throw(AssertionError("generate was called")))
    with pytest.raises(CodeExecutionRefused, match="allow_code_execution=True"): run_humaneval(model, tok, problems=[TOY])


@pytest.fixture(scope="module")
def tiny_model_and_tokenizer(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from depthprune_nb.testing import save_tiny_model
    d = save_tiny_model(tmp_path_factory.mktemp("tiny") / "m", family="llama", num_layers=2)
    return AutoModelForCausalLM.from_pretrained(d).eval(), AutoTokenizer.from_pretrained(d)


def test_run_humaneval_end_to_end_on_tiny_model(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    res = run_humaneval(model, tok, problems=[TOY] * 3, limit=2, max_new_tokens=6, batch_size=2, progress=False, **RUN)
    assert res["n"] == 2 and res["pass@1"] == 0.0 and len(res["results"]) == 2  # random weights write no working code
    assert all(r["task_id"] == "toy/0" and "result" in r for r in res["results"])
    with pytest.raises(ValueError, match="prompt_style"): run_humaneval(model, tok, problems=[TOY], prompt_style="x", **RUN)
    with pytest.raises(ValueError, match="limit"): run_humaneval(model, tok, problems=[TOY], limit=0, **RUN)
    with pytest.raises(ValueError, match="chat template"): humaneval_prompt(TOY, tok, "chat")


def test_extraction_conventions():
    text = "    return a + b\n\ndef main():\n    pass\n"
    assert extract_completion(TOY, text) == "    return a + b\n"
    for stop in ("\nclass X", "\n# note", "\nif __name__", "\nprint(1)"):
        assert extract_completion(TOY, "    return a + b\n" + stop) == "    return a + b\n"
    chat = 'import math\n\ndef add(a, b):\n    """Sum."""\n    return helper(a) + b\n\ndef helper(x):\n    return x\n\nprint(add(1, 2))\n```\nDone.'
    comp = extract_completion(TOY, chat, "chat")
    assert comp.startswith("    return helper(a) + b\n") and "import math" in comp and "def helper" in comp and "print" not in comp
    assert check_completion(TOY, comp, **RUN)["passed"]


def test_cli_refuses_humaneval_without_opt_in(tmp_path):
    from conftest import depthprune
    marker = tmp_path / "loaded"
    r = depthprune("--model_dir", tmp_path / "no-model-here", "--humaneval", "--quiet", timeout=300)
    assert r.returncode == 2 and "--allow_code_execution" in r.stderr, r.stderr
    assert "no-model-here" not in r.stderr  # refused before the model was looked for


def test_cli_humaneval_before_and_after(tmp_path, problems):
    from conftest import depthprune
    from depthprune_nb.testing import save_tiny_model
    model_dir = save_tiny_model(tmp_path / "tiny", family="llama", num_layers=3)
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(f"The {w} of the river is {v} miles long." for w, v in zip("abcdefghij" * 20, range(200))))
    out = tmp_path / "result.json"
    r = depthprune("--model_dir", model_dir, "--text_file", text, "--seqlen", 32, "--nsamples", 2, "--eval_nsamples", 0,
                   "--humaneval", "--allow_code_execution", "--humaneval_limit", 2, "--humaneval_max_new_tokens", 4,
                   "--humaneval_file", HUMANEVAL, "--quiet", "--result_json", out, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    import json
    he = json.loads(out.read_text())["stats"]["humaneval"]
    assert set(he) == {"unpruned", "pruned"} and he["pruned"]["n"] == 2 and he["unpruned"]["prompt_style"] == "plain"
    assert "HumanEval pass@1" in r.stdout and "unpruned" in r.stdout
    lost = len(set(he["unpruned"]["passed_ids"]) - set(he["pruned"]["passed_ids"]))
    assert f"vs unpruned: lost {lost}, gained" in r.stdout  # paired on the same problems


def test_auto_prompt_style_follows_the_chat_template(tiny_model_and_tokenizer):
    _, tok = tiny_model_and_tokenizer
    assert resolve_prompt_style("auto", tok) == "plain"  # no chat template: a base model is continued
    class WithTemplate: chat_template = "{{ messages }}"
    assert resolve_prompt_style("auto", WithTemplate()) == "chat"
    assert resolve_prompt_style("plain", WithTemplate()) == "plain"
    with pytest.raises(ValueError, match="prompt_style='x'"): resolve_prompt_style("x", tok)
