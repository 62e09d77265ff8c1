"""Files and programs as adversaries (issue 28): a completion must not be able to write its own verdict, and every
process a program starts must die with the call. Each attack here passed (or escaped) on the sandbox before this issue."""
import os, signal, time, secrets
from pathlib import Path

import pytest

from depthprune_nb.eval.humaneval import check_completion, check_completions
from depthprune_nb.eval.sandbox import run_program

TOY = {"task_id": "toy/0", "prompt": 'def add(a, b):\n    "Sum of a and b."\n', "entry_point": "add",
       "canonical_solution": "    return a + b\n", "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n"}
RUN = dict(allow_code_execution=True)

# Completions that solve nothing and try to make the harness report a pass anyway.
CHEATS = {
    "os._exit replaced": "    import os; os._exit = lambda *a: None\n    return None\n",
    "posix._exit replaced too": "    import os, posix; os._exit = posix._exit = lambda *a: None\n    return None\n",
    "sys.exit patched": "    import sys, os; sys.exit = os._exit = lambda *a: None\n    return None\n",
    "always-equal answer": "    class Eq:\n        def __eq__(self, o): return True\n    return Eq()\n",
    "token found in the stack frames, written to every fd": (
        "    import sys, os\n"
        "    f = sys._getframe()\n"
        "    while f is not None:\n"
        "        for v in list(f.f_locals.values()):\n"
        "            if isinstance(v, str) and len(v) == 32:\n"
        "                for fd in range(64):\n"
        "                    try: os.write(fd, (chr(10) + v + ' passed' + chr(10)).encode())\n"
        "                    except OSError: pass\n"
        "        f = f.f_back\n"
        "    os._exit(0)\n"),
    "harness monkeypatched": (
        "    import sys\n"
        "    for m in list(sys.modules.values()):\n"
        "        if getattr(m, 'main', None) is not None and hasattr(m, 'set_limits'):\n"
        "            m.disable_destructive = lambda: []\n"
        "    import os; os._exit = lambda *a: None\n"
        "    return None\n"),
}

# Attacks that today's sandbox already refused (the harness's own checks, Landlock's signal scoping); kept so they stay refused.
REFUSED_BEFORE = {
    "AssertionError silenced": "    import builtins; builtins.AssertionError = type('X', (BaseException,), {})\n    return None\n",
    "libc _exit(0) in place of os._exit": "    import ctypes, os; os._exit = lambda *a: ctypes.CDLL(None)._exit(0)\n    return None\n",
    "kill the parent": "    import os, ctypes; ctypes.CDLL(None).kill(os.getppid(), 9)\n    return None\n",
    "a check of its own": "    return None\n\ndef check(candidate):\n    pass\n",
}


@pytest.mark.parametrize("name", list(CHEATS) + list(REFUSED_BEFORE))
def test_a_cheating_completion_does_not_pass(name):
    r = check_completion(TOY, {**CHEATS, **REFUSED_BEFORE}[name], **RUN)
    assert not r["passed"], (name, r)
    assert check_completion(TOY, TOY["canonical_solution"], **RUN)["passed"]  # the honest answer still does


def test_five_cheats_score_zero():
    "The red-team's run: five answers that all `return None` after replacing os._exit scored pass@1 = 1.0."
    res = check_completions([TOY] * 5, [CHEATS["os._exit replaced"]] * 5, workers=2, **RUN)
    assert sum(r["passed"] for r in res) == 0, res


def test_examinee_exceptions_keep_their_type():
    r = check_completion(TOY, "    raise ValueError('nope')\n", **RUN)
    assert not r["passed"] and "ValueError" in r["result"], r


def test_process_cap_binds_root():
    "RLIMIT_NPROC does not bind root; the cap must: of 40 forks, at most `processes` - 1 succeed."
    forks = ("import ctypes, os\nlibc = ctypes.CDLL(None)\nok = 0\n"
             "for _ in range(40):\n    pid = libc.fork()\n    if pid == 0:\n        import time; time.sleep(5); os._exit(0)\n"
             "    ok += pid > 0\nassert ok <= 15, f'{ok} forks succeeded'\n")
    r = run_program(forks, processes=16, landlock=False, timeout=3, **RUN)
    assert r["passed"], r


def _alive_with(marker:str)->list:
    "Processes (not zombies) whose command line contains `marker`."
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit(): continue
        try:
            if marker.encode() in (d / "cmdline").read_bytes() and (d / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                found.append(int(d.name))
        except OSError: pass
    return found


def _wait_gone(marker, seconds=2.0):
    end = time.monotonic() + seconds
    while _alive_with(marker) and time.monotonic() < end: time.sleep(0.05)
    return _alive_with(marker)


# A child that leaves the session with fork() through libc (past the guard) and then sleeps under a marked name.
SETSID_ESCAPE = """
import ctypes, os, sys
libc = ctypes.CDLL(None)
if libc.fork() == 0:
    libc.setsid()
    if libc.fork() == 0:
        libc.execv(b"/bin/sleep", (ctypes.c_char_p * 3)(b"/bin/sleep", b"{marker}", None))
        os._exit(0)
    os._exit(0)
"""


def test_setsid_child_dies_with_the_call():
    marker = "3" + str(secrets.randbelow(10**6)).zfill(6) + ".5"   # a valid sleep argument, unique in /proc
    r = run_program(SETSID_ESCAPE.replace("{marker}", marker), processes=8, landlock=False, **RUN)
    left = _wait_gone(marker, 0.5)
    for pid in left: os.kill(pid, signal.SIGKILL)
    assert not left, f"processes outlived run_program: {left} ({r})"


FORK_BOMB = """
import ctypes, os
libc = ctypes.CDLL(None)
n = 0
while True:
    n += 1
    if libc.fork() == 0:
        libc.setsid()                  # out of the process group that a timeout kills
        if n % 2:                      # half the children become marked sleepers, the rest go on forking
            libc.execv(b"/bin/sleep", (ctypes.c_char_p * 3)(b"/bin/sleep", b"{marker}", None))
"""


def test_fork_bomb_is_stopped_on_time():
    "A fork bomb, each child in a session of its own, capped at 16 processes: the call ends within timeout + 2 s, nothing survives."
    marker = "3" + str(secrets.randbelow(10**6)).zfill(6) + ".25"
    t0 = time.monotonic()
    r = run_program(FORK_BOMB.replace("{marker}", marker), timeout=3, processes=16, landlock=False, **RUN)
    secs = time.monotonic() - t0
    left = _wait_gone(marker, 0.5)
    for pid in left: os.kill(pid, signal.SIGKILL)
    assert not r["passed"] and secs < 3 + 2, (secs, r)
    assert not left, f"{len(left)} fork-bomb processes outlived run_program ({r})"


@pytest.fixture(scope="module")
def protections():
    "What the sandbox applies on this machine (the worker's report from a program that does nothing)."
    return run_program("pass", **RUN)["status"]


@pytest.mark.parametrize("program", [
    "open('/proc/sys/kernel/pid_max', 'w').write('30000')",                                   # the namespace's process cap
    "import os; open('/sys/fs/cgroup/pids/cgroup.procs', 'w').write(str(os.getpid()))",      # out of the run's cgroup
    "import ctypes; assert ctypes.CDLL(None).umount2(b'/proc', 2) == 0",                       # uncover the machine's /proc
    "import ctypes; assert ctypes.CDLL(None).umount2(b'/sys/fs/cgroup', 2) == 0",
    "st = open('/proc/self/status').read()\nassert 'CapEff:\\t0000000000000000' not in st, 'no capabilities'",
])
def test_caps_cannot_be_lifted_from_inside_even_without_landlock(program, protections):
    if not protections.get("sealed_mounts"): pytest.skip("no PID and mount namespace on this machine: nothing is sealed")
    r = run_program(program, landlock=False, **RUN)
    assert not r["passed"], r


def test_the_examinee_sees_no_process_of_ours(protections):
    "In its PID namespace the examinee sees its process 1 and itself, not the examiner or the caller."
    if not protections.get("proc"): pytest.skip("no PID namespace with its own /proc on this machine")
    r = check_completion(TOY, "    import os\n    assert sorted(int(p) for p in os.listdir('/proc') if p.isdigit()) == [1, 2]\n"
                              "    return a + b\n", **RUN)
    assert r["passed"], r


@pytest.mark.parametrize("problem,completion", [
    (TOY, "    print('adding', a, b)\n    return helper(a) + b\n\ndef helper(x):\n    return x\n"),   # prints, a helper after
    (TOY | {"test": "def check(candidate):\n    assert candidate((1,), (2,)) == (1, 2) and candidate({1: 2}, {}) is None\n"},
     "    if isinstance(a, dict): return None\n    return a + b\n"),                                   # tuples, dicts, None
    (TOY | {"test": "def check(candidate):\n    try:\n        candidate(1, 'x')\n    except TypeError:\n        return\n    assert False\n"},
     "    return a + b\n"),                                                                             # an expected exception
    (TOY | {"prompt": "def helper(x):\n    return 2 * x\n\n" + TOY["prompt"],
            "test": "def check(candidate):\n    assert candidate(helper(1), 3) == 5\n"}, "    return a + b\n"),  # the prompt's helper
])
def test_honest_completions_still_pass(problem, completion):
    r = check_completion(problem, completion, **RUN)
    assert r["passed"], r


def test_an_examinee_that_exits_at_import_fails():
    r = check_completion(TOY, "    return a + b\nimport os\nos._exit(0)\n", **RUN)
    assert not r["passed"] and "ended without answering" in r["result"], r


def test_scratch_disk_is_capped(protections):
    "Many files, each under the per-file limit, stop at the scratch folder's size."
    if not protections.get("disk_cap"): pytest.skip("no mount namespace here: the scratch folder has no size cap")
    fill = "for i in range(40):\n    open(f'f{i}', 'wb').write(b'x' * (1 << 20))\n"
    r = run_program(fill, file_mb=4, disk_mb=8, **RUN)
    assert not r["passed"] and "No space left on device" in r["result"], r
    assert run_program("open('big', 'wb').write(b'x' * (5 << 20))", file_mb=4, disk_mb=8, **RUN)["result"].endswith("File too large")
