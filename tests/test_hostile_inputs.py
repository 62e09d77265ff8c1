"""Files and programs as adversaries (issue 28, items 5 and 6).

A task file from anywhere is refused with one line that names the field, its value and what is valid,
in seconds and without a traceback; and a `--save_dir` / `--save_gguf` / `--result_json` target that
cannot take the result is refused before the model loads, not after the search.
"""
import json, os, time
from pathlib import Path

import pytest

from depthprune_nb.tasks import read_task, TaskFileError
from depthprune_nb.cli import main


def task(path:Path, examples=None, text:str|None=None)->Path:
    "Write a task file holding `examples` (or the raw `text`); its path."
    path.write_text(text if text is not None else json.dumps({"examples": examples}))
    return path


def one_line_error(capsys, argv:list)->str:
    "Run `depthprune` in this process; assert it exits 2 with one line on stderr and no traceback; that line."
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, f"exit code {rc}, stderr: {err[-500:]}"
    assert err.count("\n") == 1 and err.startswith("depthprune: error: ") and "Traceback" not in err, err[-500:]
    return err


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
