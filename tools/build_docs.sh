#!/usr/bin/env bash
# Build the documentation site offline, without Quarto (which cannot be installed here):
#   1. nbdev_proc_nbs: process nbs/ into _proc/ (runs the cells nbdev runs for docs: imports and
#      show_doc; every other output is the one kept in the notebook, plots included);
#   2. smalldocs render _proc: render the site, pure Python, into _proc/<output-dir> (nbdev.yml
#      sets it from settings.ini doc_path: _proc/_docs);
#   3. check that every page was rendered and every figure of a notebook is an <img> in its page.
# Fails on any error, and on any smalldocs warning except the known-benign ones listed below.
# Site config: nbs/_quarto.yml and nbs/sidebar.yml (the top-level _quarto.yml links to the first).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export HF_HUB_DISABLE_PROGRESS_BARS=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false

# nbdev_proc_nbs tries to download and install Quarto (sudo + curl) when `quarto` is not on
# PATH, although processing does not need it. Give it a stub that fails if anything calls it.
stub="$(mktemp -d)"
trap 'rm -rf "$stub"' EXIT
printf '#!/bin/sh\necho "quarto is not installed: the site is rendered by smalldocs (tools/build_docs.sh)" >&2\nexit 1\n' > "$stub/quarto"
chmod +x "$stub/quarto"

# A fresh _proc/ processes every notebook. No --force: nbdev passes it on to nbdev_sidebar,
# which would then overwrite the hand-written nbs/sidebar.yml.
rm -rf _proc
PATH="$stub:$PATH" nbdev_proc_nbs --n_workers "${DOCS_WORKERS:-2}"

# nbdev names each page by the `output-file` of its front matter (52_plots.ipynb -> plots.html),
# and the doc links it writes point there; smalldocs names pages after the notebook. Rename the
# processed notebooks to their output-file names (and the sidebar entries with them) so that
# the site has nbdev's page names.
python - <<'PY'
import json, re
from pathlib import Path
proc, moved = Path("_proc"), {}
for nb in sorted(proc.rglob("*.ipynb")):
    rel = nb.relative_to(proc)
    if any(p.startswith(("_", ".")) for p in rel.parts): continue
    d = json.loads(nb.read_text())
    fm = "".join(d["cells"][0]["source"]) if d["cells"] and d["cells"][0]["cell_type"] == "raw" else ""
    m = re.search(r"^output-file:\s*(\S+)\.html\s*$", fm, re.M)
    if not m: continue
    d["cells"][0]["source"] = re.sub(r"^output-file:.*\n", "", fm, flags=re.M)
    new = nb.with_name(m.group(1) + ".ipynb")
    if new != nb and new.exists(): raise SystemExit(f"{rel} and {new.relative_to(proc)} would both become {new.name}")
    nb.unlink(); new.write_text(json.dumps(d, indent=1))
    if new != nb: moved[str(rel)] = str(new.relative_to(proc))
side = proc / "sidebar.yml"
if side.exists():
    text = side.read_text()
    for old, new in moved.items(): text = re.sub(rf"(?<![\w/.-]){re.escape(old)}(?![\w.-])", new, text)
    side.write_text(text)
print(f"renamed {len(moved)} processed notebooks to their nbdev page names")
PY

# Equations as MathML (latex2mathml), so no page loads KaTeX from a CDN: the site reads offline. The notebooks keep
# their TeX for Quarto.
python tools/tex_to_mathml.py _proc

# Warnings smalldocs gives for Quarto-only settings that a real Quarto build uses:
# the commonmark format (README) and keep-md.
BENIGN='format commonmark is not built|format\.html\.keep-md is ignored'
smalldocs render --quiet _proc 2> "$stub/warnings" || { cat "$stub/warnings" >&2; exit 1; }
if grep -vE "$BENIGN" "$stub/warnings" | grep -q .; then
  echo "smalldocs warnings:" >&2; grep -vE "$BENIGN" "$stub/warnings" >&2; exit 1
fi

python - <<'PY'
import json, re, sys, yaml
from pathlib import Path
proc = Path("_proc")
site = proc / yaml.safe_load((proc / "nbdev.yml").read_text())["project"]["output-dir"]
bad, pages = [], 0
for nb in sorted(proc.rglob("*.ipynb")):
    rel = nb.relative_to(proc)
    if any(p.startswith(("_", ".")) for p in rel.parts): continue
    page = site / rel.with_suffix(".html")
    if not page.exists(): bad.append(f"{rel}: no rendered page {page}"); continue
    pages += 1
    figs = sum(1 for c in json.loads(nb.read_text())["cells"] for o in c.get("outputs", [])
               if any(k.startswith("image/") for k in o.get("data", {})))
    imgs = len(re.findall(r"<img\b", page.read_text(encoding="utf-8")))
    if imgs < figs: bad.append(f"{page}: {figs} figure(s) in the notebook but {imgs} <img> in the page")
if bad: sys.exit("docs build check failed:\n  " + "\n  ".join(bad))
print(f"docs site built: {pages} pages in {site}")
PY

# What a reader sees, measured in headless Chromium (outputs, tables, figure text), and what the build machine leaks:
# see tools/check_site.py.
python tools/check_site.py _proc/_docs
