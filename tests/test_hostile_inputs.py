"""Files and programs as adversaries (issue 28, items 5 and 6).

A task file from anywhere is refused with one line that names the field, its value and what is valid,
in seconds and without a traceback; and a `--save_dir` / `--save_gguf` / `--result_json` target that
cannot take the result is refused before the model loads, not after the search.
"""
import json, os, time
from pathlib import Path

import pytest

from depthprune_nb.eval import tasks
from depthprune_nb.cli import prune as cli
read_task, TaskFileError, main = tasks.read_task, tasks.TaskFileError, cli.main


def task(path:Path, examples=None, text:str|None=None)->Path:
    "Write a task file holding `examples` (or the raw `text`); its path."
    path.write_text(text if text is not None else json.dumps({"examples": examples}))
    return path


def one_line_error(capsys, argv:list)->str:
    "Run `depthprune` in this process; assert it exits 2 with one line on stderr and no traceback; that line."
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, f"exit code {rc}, stderr: {err[-500:]}"
    last = err.rstrip("\n").split("\n")[-1]  # a loader's progress bar may come before it, on the same stream
    assert last.startswith("depthprune: error: ") and err.count("depthprune: error: ") == 1 and "Traceback" not in err, err[-500:]
    return last


OK = {"input": "x", "target_scores": {"a": 1, "b": 0}}

# ---------------------------------------------------------------------------------------------- task files

@pytest.mark.parametrize("score, shown", [("NaN", "nan"), ("Infinity", "inf"), ("-Infinity", "-inf"), ("1e999", "inf")])
def test_non_finite_scores_are_refused(tmp_path, score, shown):
    "Python's json reads NaN/Infinity (and 1e999 as inf); with a NaN, `max` made the first choice gold."
    f = task(tmp_path / "t.json", text='{"examples": [%s, {"input": "y", "target_scores": {"a": %s, "b": 0}}]}'
             % (json.dumps(OK), score))
    with pytest.raises(TaskFileError, match=rf"examples\[1\]: 'target_scores'\['a'\] is {shown}; scores must be finite"):
        read_task(f)


def test_deep_nesting_is_a_clear_error_not_a_recursion_error(tmp_path):
    "10^5 levels: json.loads raised RecursionError; now a linear bracket scan refuses it before parsing."
    f = task(tmp_path / "deep.json", text='{"examples": ' + "[" * 10**5 + "]" * 10**5 + "}")
    with pytest.raises(TaskFileError, match=r"nests JSON arrays/objects 100,001 levels deep .*at most 32 are valid"):
        read_task(f)
    inside = task(tmp_path / "inside.json", text='{"examples": [{"input": ' + "[" * 5000 + "]" * 5000 + "}]}")
    with pytest.raises(TaskFileError, match="5,003 levels deep"): read_task(inside)
    # brackets inside strings are text, not nesting: a real-looking file with "[[[[" in it still reads
    assert read_task(task(tmp_path / "ok.json", [{"input": "[" * 100, "target_scores": {"{" * 50: 1, "b": 0}}]))["total"] == 1


def test_a_million_choices_are_refused_in_seconds(tmp_path):
    "10^6 choices were accepted, then tokenized and scored by lm-eval for minutes."
    text = '{"examples": [{"input": "x", "target_scores": {' + ", ".join(f'"{i}": {int(i == 0)}' for i in range(10**6)) + "}}]}"
    f = task(tmp_path / "many.json", text=text)
    t0 = time.perf_counter()
    with pytest.raises(TaskFileError, match=r"examples\[0\]: 'target_scores' has 1,000,000 choices; at most 1,000 are valid"):
        read_task(f)
    assert time.perf_counter() - t0 < 10, "refusing the file took as long as reading it should not"
    assert len(read_task(task(tmp_path / "k.json", [{"input": "x", "target_scores": {str(i): int(i == 0) for i in range(1000)}}]))
               ["docs"][0]["choices"]) == 1000  # the limit itself is valid


def test_example_count_and_text_lengths_are_capped(tmp_path):
    "Each limit names the field, the value and the largest valid one."
    many = task(tmp_path / "many.json", [OK] * 200_001)
    with pytest.raises(TaskFileError, match=r"'examples' has 200,001 examples; at most 200,000 are valid"): read_task(many)
    long_input = task(tmp_path / "li.json", [OK, {"input": "x" * 100_001, "target_scores": {"a": 1, "b": 0}}])
    with pytest.raises(TaskFileError, match=r"examples\[1\]: 'input' has 100,001 characters; at most 100,000"): read_task(long_input)
    long_choice = task(tmp_path / "lc.json", [{"input": "x", "target_scores": {"y" * 100_001: 1, "b": 0}}])
    with pytest.raises(TaskFileError, match=r"examples\[0\]: the choice 'yyy.*' has 100,001 characters"): read_task(long_choice)
    prefix = task(tmp_path / "p.json", text=json.dumps({"task_prefix": "p" * 100_001, "examples": [OK]}))
    with pytest.raises(TaskFileError, match=r"'task_prefix' has 100,001 characters"): read_task(prefix)


def test_an_oversized_file_is_refused_before_it_is_read(tmp_path):
    "A sparse 300 MB file: refused from its size alone (no 300 MB string, no parse)."
    f = tmp_path / "huge.json"
    with open(f, "wb") as h: h.truncate(300 * 2**20)
    t0 = time.perf_counter()
    with pytest.raises(TaskFileError, match=r"holds 314,572,800 bytes; at most 268,435,456 are valid"): read_task(f)
    assert time.perf_counter() - t0 < 1


def test_messages_quote_at_most_a_few_values(tmp_path):
    "A malformed field of a million entries is described, not printed."
    f = task(tmp_path / "t.json", [{"input": list(range(10**6)), "target_scores": {"a": 1, "b": 0}}])
    with pytest.raises(TaskFileError) as e: read_task(f)
    assert "has no text 'input'" in str(e.value) and len(str(e.value)) < 300


HOSTILE = {  # file name -> its text (or bytes), each once a traceback, a wrong gold answer or minutes of work
    "nan.json": '{"examples": [{"input": "x", "target_scores": {"a": NaN, "b": 0}}]}',
    "deep.json": '{"examples": ' + "[" * 10**5 + "]" * 10**5 + "}",
    "deep_object.json": '{"examples": [' + '{"a": ' * 10**5 + "1" + "}" * 10**5 + "]}",
    "many.json": json.dumps({"examples": [{"input": "x", "target_scores": {str(i): int(i == 0) for i in range(10**5)}}]}),
    "binary.json": b"\xff\xfe\x00garbage",
    "empty.json": "",
    "null.json": "null",
    "digits.json": '{"examples": [{"input": "x", "target_scores": {"a": ' + "9" * 5000 + ', "b": 0}}]}',
    "list_scores.json": json.dumps({"examples": [{"input": "x", "target_scores": list(range(10**5))}]}),
    "unterminated.json": '{"examples": [{"input": "x' + "[" * 1000,
}

@pytest.mark.parametrize("name", list(HOSTILE))
def test_cli_refuses_a_bad_task_file_with_one_line(tmp_path, capsys, name):
    "Exit 2, one line naming the file, before any model is loaded (`--model_dir` does not exist)."
    f = tmp_path / name
    (f.write_bytes if isinstance(HOSTILE[name], bytes) else f.write_text)(HOSTILE[name])
    err = one_line_error(capsys, ["--model_dir", str(tmp_path / "no_model"), "--tasks", str(f), "--quiet"])
    assert str(f) in err, f"the message does not name the task file: {err}"

# ---------------------------------------------------------------------------------------------- save targets
import shutil, subprocess
from conftest import WIKITEXT


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from depthprune_nb.testing import save_tiny_model
    return save_tiny_model(tmp_path_factory.mktemp("m") / "tiny", family="llama", num_layers=4)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    pytest.importorskip("gguf")
    from depthprune_nb.testing import save_tiny_gguf
    return save_tiny_gguf(tmp_path_factory.mktemp("g") / "tiny.gguf", num_layers=4)


@pytest.fixture
def no_loading(monkeypatch):
    "Loading a model, or starting the search, fails the test: a refusal must come before both."
    def boom(*a, **k): raise AssertionError("the model was loaded before the save target was refused")
    monkeypatch.setattr(cli, "load_model", boom); monkeypatch.setattr(cli, "load_gguf_from_args", boom)


@pytest.fixture
def no_search(monkeypatch):
    "Starting the search fails the test (loading is allowed: a GGUF's size is known once it is loaded)."
    def boom(*a, **k): raise AssertionError("the search started before the save target was refused")
    monkeypatch.setattr(cli, "pruner_class", lambda *a, **k: boom)


@pytest.fixture
def tmpfs(tmp_path):
    "Mount a real tmpfs (`mount -o OPTIONS`) under tmp_path; the test is skipped where this user cannot mount."
    made = []
    def mount(name:str, options:str)->Path:
        d = tmp_path / name; d.mkdir()
        if os.geteuid() != 0 or not shutil.which("mount"): pytest.skip("mounting a tmpfs needs root")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(d)], capture_output=True, text=True)
        if r.returncode: pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()[:100]}")
        made.append(d); return d
    yield mount
    for d in made: subprocess.run(["umount", str(d)], capture_output=True)


def full_disk(monkeypatch, free:int=100 * 1024):
    "Every file system reports `free` bytes free (shutil.disk_usage), as a nearly full disk would."
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**12, 10**12 - free, free))


def args_for(model, *extra)->list:
    "A small run's flags (the refusals below come before any text is read)."
    return ["--model_dir", str(model), "--text_file", str(WIKITEXT), "--nsamples", "2", "--seqlen", "32",
            "--eval_nsamples", "0", "--quiet", *map(str, extra)]


@pytest.mark.parametrize("option", ["--save_dir", "--result_json"])
def test_a_target_under_a_file_is_refused_before_loading(tiny_llama, tmp_path, capsys, no_loading, option):
    "A parent that is a regular file defeats root too: today this was found only when saving, after the search."
    (tmp_path / "a_file").write_text("mine")
    target = tmp_path / "a_file" / "out"
    err = one_line_error(capsys, args_for(tiny_llama, option, target))
    assert f"{option}='{target}' cannot be written: '{tmp_path / 'a_file'}' is a file, not a folder" in err
    assert (tmp_path / "a_file").read_text() == "mine" and sorted(os.listdir(tmp_path)) == ["a_file"]


def test_a_result_json_that_is_a_folder_is_refused_before_loading(tiny_llama, tmp_path, capsys, no_loading):
    err = one_line_error(capsys, args_for(tiny_llama, "--result_json", tmp_path))
    assert f"--result_json='{tmp_path}' is a folder; name the JSON file to write" in err


def test_a_gguf_target_under_a_file_is_refused_before_loading(tiny_gguf, tmp_path, capsys, no_loading):
    (tmp_path / "a_file").write_text("mine")
    err = one_line_error(capsys, args_for(tiny_gguf, "--save_gguf", tmp_path / "a_file" / "x.gguf"))
    assert "--save_gguf=" in err and "is a file, not a folder" in err


def test_a_read_only_file_system_is_refused_before_loading(tiny_llama, tiny_gguf, tmpfs, capsys, no_loading):
    "A real read-only tmpfs: root cannot write there either (os.access and statvfs both say so)."
    ro = tmpfs("ro", "ro,size=1m")
    err = one_line_error(capsys, args_for(tiny_llama, "--save_dir", ro / "out"))
    assert f"--save_dir='{ro / 'out'}' cannot be written: '{ro}' is on a read-only file system" in err
    err = one_line_error(capsys, args_for(tiny_gguf, "--save_gguf", ro / "sub" / "x.gguf"))
    assert f"--save_gguf='{ro / 'sub' / 'x.gguf'}' cannot be written: '{ro}' is on a read-only file system" in err


def test_a_folder_this_user_may_not_write_is_refused_before_loading(tiny_llama, tmp_path, capsys, no_loading, monkeypatch):
    "What a non-root user meets on a chmod 0555 folder (root may write there, so os.access is made to answer as for them)."
    locked = tmp_path / "locked"; locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if Path(p) == locked else real(p, mode, **k))
    err = one_line_error(capsys, args_for(tiny_llama, "--save_dir", locked / "out"))
    assert f"--save_dir='{locked / 'out'}' cannot be written: this user may not write in '{locked}'" in err


def test_a_full_file_system_is_refused_before_loading(tiny_llama, tmpfs, capsys, no_loading):
    "A real 64 KiB tmpfs: the pruned tiny checkpoint (~0.25 MiB, estimated from its safetensors header) cannot fit."
    full = tmpfs("full", "size=64k")
    err = one_line_error(capsys, args_for(tiny_llama, "--save_dir", full / "out"))
    assert f"--save_dir='{full / 'out'}' (about " in err and f"more room than the file system holding '{full}' has (0.1 MiB free)" in err


def test_a_full_disk_is_refused_for_every_source(tiny_llama, tiny_gguf, tmp_path, capsys, monkeypatch, no_search):
    "disk_usage made to report 100 KiB free: safetensors and GGUF targets refused before loading; a GGUF's --save_dir "
    "(its dequantized size is known once loaded) before the search."
    full_disk(monkeypatch)
    def no_load(*a, **k): raise AssertionError("a safetensors checkpoint was loaded before its --save_dir was refused")
    monkeypatch.setattr(cli, "load_model", no_load)
    err = one_line_error(capsys, args_for(tiny_llama, "--save_dir", tmp_path / "out"))
    assert "--save_dir=" in err and "(0.1 MiB free)" in err
    err = one_line_error(capsys, args_for(tiny_gguf, "--save_gguf", tmp_path / "x.gguf"))
    assert "--save_gguf=" in err and "more room" in err
    err = one_line_error(capsys, args_for(tiny_gguf, "--save_dir", tmp_path / "from_gguf"))
    assert "--save_dir=" in err and "more room" in err
    assert sorted(os.listdir(tmp_path)) == [], "a refused save left something behind"


def test_targets_on_one_file_system_add_up(tiny_gguf, tmp_path, capsys, monkeypatch, no_search):
    "Each of --save_gguf and --save_dir would fit alone (the file system reports room for the larger one); not both."
    biggest, check = [0], cli.check_free_space
    def spy(needs):
        biggest[0] = max([biggest[0]] + [int(n * 1.05) + 2**20 for *_, n in needs])
        return check(needs)
    monkeypatch.setattr(cli, "check_free_space", spy)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**12, 10**12 - biggest[0], biggest[0]))
    err = one_line_error(capsys, args_for(tiny_gguf, "--save_gguf", tmp_path / "x.gguf", "--save_dir", tmp_path / "d"))
    assert f"--save_dir='{tmp_path / 'd'}' (about" in err and f"and --save_gguf='{tmp_path / 'x.gguf'}' (about" in err, err


def test_an_existing_save_dir_is_left_as_it_was(tiny_llama, tmp_path, capsys, monkeypatch, no_loading):
    "--overwrite on a full disk: refused before anything is written; the user's files are byte-for-byte unchanged."
    out = tmp_path / "out"; out.mkdir()
    (out / "model.safetensors").write_bytes(b"an earlier save"); (out / "notes.txt").write_text("mine")
    full_disk(monkeypatch)
    err = one_line_error(capsys, args_for(tiny_llama, "--save_dir", out, "--overwrite"))
    assert "more room" in err
    assert (out / "model.safetensors").read_bytes() == b"an earlier save" and (out / "notes.txt").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["out"] and sorted(os.listdir(out)) == ["model.safetensors", "notes.txt"]
