"""Equations in the processed notebooks' markdown as MathML, so the offline site shows them without KaTeX or MathJax
from a CDN (Chromium renders MathML natively). The notebooks keep their TeX (`$...$`, `$$...$$`): Quarto renders it;
this step is for the offline build (tools/build_docs.sh), after nbdev_proc_nbs.

    python tools/tex_to_mathml.py _proc      # rewrites the .ipynb files under _proc in place

Code spans and fenced code blocks are left alone; an inline `$...$` must open and close on one line, with no space
inside either dollar (so "costs $5 and $6" stays prose).
"""
import json, re, sys
from pathlib import Path
from latex2mathml.converter import convert

CODE = re.compile(r"(```.*?```|`[^`\n]*`)", re.S)          # fenced blocks and inline code: never converted
DISPLAY = re.compile(r"\$\$(.+?)\$\$", re.S)
INLINE = re.compile(r"(?<![\\$\w])\$(?=\S)([^$\n]+?)(?<=\S)\$(?![\w$])")


def to_mathml(text:str)->tuple:
    "(text with its TeX as MathML, equations converted)."
    parts, n = CODE.split(text), 0
    for i in range(0, len(parts), 2):                        # even parts lie outside code
        def block(m):
            nonlocal n; n += 1
            return '\n<div class="equation">' + convert(m.group(1).strip(), display="block") + "</div>\n"
        def inline(m):
            nonlocal n; n += 1
            return convert(m.group(1), display="inline")
        parts[i] = INLINE.sub(inline, DISPLAY.sub(block, parts[i]))
    return "".join(parts), n


def main(root:str)->int:
    total = 0
    for nb in sorted(Path(root).rglob("*.ipynb")):
        d, changed = json.loads(nb.read_text()), 0
        for c in d["cells"]:
            if c["cell_type"] != "markdown": continue
            src = "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            new, n = to_mathml(src)
            if n: c["source"], changed = new, changed + n
        if changed: nb.write_text(json.dumps(d, indent=1)); total += changed
    print(f"{total} equations written as MathML")
    return 0


if __name__ == "__main__": raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else "_proc"))
