"""Write README.md from nbs/index.ipynb (nbdev_readme needs Quarto, which these machines lack).

    python tools/make_readme.py          # rewrite README.md
    python tools/make_readme.py --check  # exit 1 if README.md is out of step with the notebook

Markdown cells are copied; code cells become ```python blocks followed by their text output;
cells marked `#| hide` are left out, as nbdev's own rendering does.
"""
import json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _src(cell): return "".join(cell["source"])


def _is_hidden(src): return any(re.match(r"#\|\s*hide\b", l) for l in src.splitlines())


def _output_text(cell):
    parts = []
    for o in cell.get("outputs", []):
        if o.get("output_type") == "stream" and o.get("name") == "stdout": parts.append("".join(o["text"]))
        elif "text/plain" in o.get("data", {}) and "image/png" not in o.get("data", {}):
            parts.append("".join(o["data"]["text/plain"]) + "\n")
    return "".join(parts).rstrip("\n")


def render(nb_path=ROOT / "nbs" / "index.ipynb")->str:
    out = []
    for cell in json.loads(Path(nb_path).read_text(encoding="utf-8"))["cells"]:
        src = _src(cell)
        if cell["cell_type"] == "markdown": # images are relative to nbs/ on the site, to the root in README.md
            out.append(re.sub(r"\]\((images/[^)]+)\)", r"](nbs/\1)", src.strip()))
        elif cell["cell_type"] == "code" and not _is_hidden(src):
            code = "\n".join(l for l in src.splitlines() if not l.startswith("#|")).strip()
            if code: out.append(f"```python\n{code}\n```")
            text = _output_text(cell)
            if text: out.append(f"```\n{text}\n```")
    return "\n\n".join(s for s in out if s) + "\n"


if __name__ == "__main__":
    readme, text = ROOT / "README.md", render()
    if "--check" in sys.argv:
        if readme.read_text(encoding="utf-8") != text:
            sys.exit("README.md is out of step with nbs/index.ipynb: run `python tools/make_readme.py` and commit")
        print("README.md matches nbs/index.ipynb")
    else:
        readme.write_text(text, encoding="utf-8"); print(f"wrote {readme}")
