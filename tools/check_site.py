"""Check the built docs site the way a reader sees it. Exit 1, naming the page and the leak, if any page has:

- a link to an anchor or page that does not exist, or a markdown link left raw (e.g. inside a rendered signature);
- a heading that repeats the entry right below it;
- something of the build machine in a cell's output: a temporary path (`/tmp/...`, `tmpab12cd_x`), a home or
  `site-packages` path, a warning (`FutureWarning: ...`), a memory address (`at 0x7f...`), a progress bar;
- a float printed with 8 or more significant digits (`0.7992972632249196`): round it;
- raw HTML printed as text (`<span style=...>` shown literally instead of rendered);
- `NoneType=None` in a signature (a parameter with default `None` and no annotation: annotate it, `x:int|None=None`);
- a figure drawn too wide for its box: the content column is BOX px wide; a PNG of W px at D dpi is a figure of
  W/D inches, drawn legible at the page when W*100/D <= BOX*1.15 (then 8 pt text is >= 9 px on screen);
- a table wider than the column: an HTML table, or printed text laid out in columns (words apart by 2+ spaces,
  or indented) with a line longer than the column holds. Other printed text wraps (nbs/styles.css) and code
  blocks, sources and signatures, wrap too (`code-overflow: wrap` in nbs/_quarto.yml): neither is measured, but a
  code block that does not wrap and does not fit is reported.

    python tools/check_site.py [_proc/_docs]    # exit 1 if anything is found

Widths are estimated from the text (monospace: 0.6 em per character), with the sizes of nbs/styles.css and the
theme: BOX, ROOT_PX, OUT_FONT_REM and OUT_PAD_PX below must follow them.
"""
import base64, html, re, struct, sys
from pathlib import Path
from html.parser import HTMLParser

site = Path(sys.argv[1] if len(sys.argv) > 1 else "_proc/_docs")
BOX = 760            # px: the content column of a page (smalldocs' --sd-body-width) at a desktop window
ROOT_PX = 17         # px: 1rem in the cosmo theme
OUT_FONT_REM = 0.8   # output <pre> font size (nbs/styles.css)
OUT_PAD_PX = 16 + 34 # output <pre>: indent and border left of it, padding 1rem on both sides
OUT_COLS = int((BOX - OUT_PAD_PX) / (OUT_FONT_REM * ROOT_PX * 0.6))  # characters an output line may hold
TABLE_FONT_PX, CELL_PAD_PX = 0.95 * ROOT_PX, 16  # tables: .95rem; .5rem padding each side of a cell
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class P(HTMLParser):
    "Ids, links, and the blocks a reader sees: <pre> blocks, cell outputs, images, tables; each knows if it is output."
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids, self.hrefs, self.stack = set(), [], []
        self.pres, self.outputs, self.imgs, self.tables = [], [], [], []
    def _in(self, pred): return any(pred(t, c) for t, c in self.stack)
    def handle_starttag(self, tag, attrs):
        a = dict(attrs); cls = (a.get("class") or "").split()
        if "id" in a: self.ids.add(a["id"])
        if tag == "a" and a.get("href"): self.hrefs.append(a["href"])
        out = self._in(lambda t, c: any(k.startswith("cell-output") for k in c))
        if tag == "img": self.imgs.append(dict(src=a.get("src", ""), out=out))
        if tag in VOID: return
        if tag == "pre": self.pres.append(dict(cls=cls, out=out, text=[]))
        if tag == "div" and any(k.startswith("cell-output") for k in cls) and not out:
            self.outputs.append(dict(cls=cls, text=[], pres=len(self.pres)))
        if tag == "table": self.tables.append(dict(rows=[], out=out))
        if tag == "tr" and self.tables: self.tables[-1]["rows"].append([])
        if tag in ("td", "th") and self.tables and self.tables[-1]["rows"]: self.tables[-1]["rows"][-1].append("")
        self.stack.append((tag, cls))
    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID and self.stack: self.stack.pop()
    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, -1, -1):  # close up to the matching tag (tolerates unclosed <p>, <li>)
            if self.stack[i][0] == tag: del self.stack[i:]; break
    def handle_data(self, d):
        if self._in(lambda t, c: t == "pre") and self.pres: self.pres[-1]["text"].append(d)
        if self._in(lambda t, c: any(k.startswith("cell-output") for k in c)) and self.outputs:
            self.outputs[-1]["text"].append(d)
        if self._in(lambda t, c: t in ("td", "th")) and self.tables and self.tables[-1]["rows"] and self.tables[-1]["rows"][-1]:
            self.tables[-1]["rows"][-1][-1] += d


def png_size(data: bytes):
    "Width, height and dpi (None if the PNG does not say) of a PNG."
    w, h = struct.unpack(">II", data[16:24]); i = data.find(b"pHYs"); dpi = None
    if i > 0:
        x, _, unit = struct.unpack(">IIB", data[i + 4:i + 13])
        if unit == 1: dpi = x * 0.0254
    return w, h, dpi


# What the build machine leaves in an output: (what, pattern)
LEAKS = [("temporary path", r"(?:/tmp|/var/folders|/private/var)/\S*|\btmp[a-z0-9_]{8}\b"),
         ("home or install path", r"(?:/root|/home/\w+|/Users/\w+)/\S+|\S*(?:site|dist)-packages\S*"),
         ("warning", r"\b\w*Warning: .{0,60}"),
         ("memory address", r"\bat 0x[0-9a-fA-F]{6,}"),
         ("progress bar", r"[\d.]+\s?(?:it|s/it|B|kB|MB)/s\]|\|#{3,}"),
         ("raw HTML printed as text", r"</?(?:span|div|p|b|i|br|table|tr|td|th|pre|code|a|img|font|style)(?:\s+[\w-]+=[^>]{0,40}>?|\s*/?>)"),
        ]
ALIGNED = re.compile(r"\S {2,}\S|^ {2,}\S")  # a line laid out in columns: words apart by 2+ spaces, or indented
FLOAT = re.compile(r"(?<![\w.])-?(\d+)\.(\d+)(?:[eE][-+]?\d+)?(?![\w.])")


def long_floats(text):
    for m in FLOAT.finditer(text):
        if len((m.group(1) + m.group(2)).lstrip("0")) >= 8: yield m.group(0)


def width_px(rows):
    "Narrowest width of a table: cells wrap at spaces, so the longest word of each column (~0.55 em a character)."
    cols, word = max((len(r) for r in rows), default=0), lambda c: max(map(len, c.split() or [""]))
    return sum(max((word(r[i]) for r in rows if i < len(r)), default=0) * TABLE_FONT_PX * 0.55 + 2 * CELL_PAD_PX
               for i in range(cols))


css = "\n".join(p.read_text(errors="replace") for p in site.glob("*.css"))
CODE_WRAPS = bool(re.search(r"pre\.sourceCode\s*>\s*code\s*\{[^}]*white-space:\s*pre-wrap", css))  # nbs/styles.css
pages = {}
for f in site.rglob("*.html"):
    p = P(); p.feed(f.read_text(errors="replace")); pages[f] = p
bad = []
for f, p in pages.items():
    rel = f.relative_to(site)
    for h in p.hrefs:
        for host in ("https://depthprune.github.io/depthprune_nb/",):
            if h.startswith(host): h = "/" + h[len(host):]
        if h.startswith(("http", "mailto:", "javascript:")) or "#" not in h: continue
        path, anchor = h.split("#", 1)
        target = ((site / path[1:]) if path.startswith("/") else (f.parent / path)).resolve() if path else f.resolve()
        tp = next((q for g, q in pages.items() if g.resolve() == target), None)
        if tp is None: bad.append((rel, h, "missing page")); continue
        if anchor and anchor not in tp.ids: bad.append((rel, h, "missing anchor"))
    raw = re.findall(r"\[<code>[^<]+</code>\]\([^)]+\)|\[`[^`]+`\]\(", f.read_text(errors="replace"))
    for r in raw: bad.append((rel, r[:80], "raw markdown link"))

    for o in p.outputs:  # cell outputs: nothing of the build machine, no long floats, no HTML shown as text
        text = "".join(o["text"])
        for what, pat in LEAKS:
            for m in re.finditer(pat, text): bad.append((rel, m.group(0)[:80], what))
        for x in long_floats(text): bad.append((rel, x, "float with 8+ significant digits"))
    for pre in p.pres:
        text = "".join(pre["text"])
        if "NoneType" in text: bad.append((rel, re.search(r"[^\n]*NoneType[^\n]*", text).group(0).strip()[:80], "NoneType in a signature"))
        if "sourceCode" in pre["cls"]:
            if not CODE_WRAPS and "code-overflow-wrap" not in pre["cls"] and max(map(len, text.splitlines() or [""])) > OUT_COLS:
                bad.append((rel, text.splitlines()[0][:60], "code block neither wraps nor fits"))
        elif pre["out"]:  # printed text wraps (nbs/styles.css), which is fine for prose but breaks a table's columns
            for line in text.splitlines():
                if len(line) > OUT_COLS and ALIGNED.search(line):
                    bad.append((rel, f"{len(line)} > {OUT_COLS} characters: {line[:50]}", "table row wider than the page")); break
    for t in p.tables:
        w = width_px(t["rows"])
        if w > BOX: bad.append((rel, f"~{w:.0f} px: " + " | ".join(c.strip() for c in (t["rows"] or [[]])[0])[:60], "table wider than the page"))
    for im in p.imgs:
        src = im["src"]
        if src.startswith("data:image/png;base64,"): data = base64.b64decode(src.split(",", 1)[1])
        elif src.endswith(".png") and not src.startswith(("http:", "https:")) and (f.parent / src).exists(): data = (f.parent / src).read_bytes()
        else: continue
        w, h, dpi = png_size(data)
        if dpi is None: continue  # a screenshot, not a figure: shown at the width it has, or scaled down
        at100 = w * 100 / dpi
        if at100 > BOX * 1.15:
            bad.append((rel, f"{w}x{h} px at {dpi:.0f} dpi = {w/dpi:.1f} in wide; draw it <= {BOX*1.15/100:.1f} in", "figure too wide: text shrinks below 9 px"))
# Leaks in outputs that only a long run can redo: the notebook keeps the outputs of a run of many minutes, and
# outputs are never edited by hand. Reported, not failed; delete an entry once its notebook has been re-run.
KNOWN = [  # (page, what, excerpt starts with; why it is still there)
    ("tutorials/smollm2_cpu.html", "", "", "its sweep took 75 min on the 2-core CPU: re-run it to redraw the figures "
     "at <= 8 in and to print the result table with rounded PPLs"),
    ("tutorials/cpu_demo.html", "", "", "trains the demo model (7 min) and sweeps it: re-run it to redraw plot_proxy "
     "at 8 in and to drop the demo folder's path from the training summary"),
    ("demo.html", "temporary path", "/tmp/depthprune-demo-model", "the `#| slow` cell trains the demo model (7 min)"),
]
def known(b):
    return next((why for page, what, start, why in KNOWN
                 if str(b[0]) == page and what in ("", b[2]) and str(b[1]).startswith(start)), None)
for b in sorted(set(bad), key=str):
    if known(b): print(*b, "known: " + known(b), sep="  |  ")
bad = [b for b in set(bad) if not known(b)]
for b in sorted(bad, key=str): print(*b, sep="  |  ")
print(len(bad), "problems")
repeated = 0

# headings that repeat the entry right below them ("fast_search" heading, then the fast_search entry)
for f in site.rglob("*.html"):
    heads = [re.sub(r"<[^>]+>", "", m.group(2)).strip() for m in re.finditer(r"<h([1-4])[^>]*>(.*?)</h\1>", f.read_text(errors="replace"), re.S)]
    for a, b in zip(heads, heads[1:]):
        if a == b: print(f.relative_to(site), " |  repeated heading", a); repeated += 1

sys.exit(1 if bad or repeated else 0)
