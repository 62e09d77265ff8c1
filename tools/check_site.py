"""Check the built docs site the way a reader sees it. Exit 1, naming the page and the problem, if any page has:

Measured in headless Chromium, each page laid out in a 1280 x 900 px window with its scrollbar, as a desktop browser
lays it out (the first line printed says the content column's width and how many characters an output line holds):
- a line of printed output that runs past its box, or a line laid out in columns (words apart by 2+ spaces, or
  indented: a printed table, `--help`) that wraps onto a second line. Printed prose may wrap (nbs/styles.css);
- a code block (cell, source, signature) with a line that runs past its box;
- a table wider than its box;
- an equation left as raw TeX (its KaTeX or MathJax did not load: the site must work offline);
- a figure whose text is too small on screen: the figure is shown at (displayed width / PNG width) of its pixels, and
  its 8-pt text, 8/72 in x dpi pixels in the PNG, must be at least 8 px on screen.
  (The sizes of the fonts inside a figure cannot be read from its PNG: 8 pt is the smallest text a figure should
  use; a heatmap's cell numbers drawn smaller than that are not detected.)

Read from the HTML:
- a link to an anchor or page that does not exist, or a markdown link left raw (e.g. inside a rendered signature);
- a heading that repeats the entry right below it;
- something of the build machine anywhere in a page: "Call self as a function." (a `__call__` without a docstring),
  a model or folder named by `tempfile` (`tiny_opt_bvlusw2a`, `tmpab12cd_x`: a prefix and 8 random characters),
  `../shared` or `shared/data` (the developers' data folder);
- something of the build machine in a cell's output: a temporary path (`/tmp/...`), a home or
  `site-packages` path, a warning (`FutureWarning: ...`), a memory address (`at 0x7f...`), a progress bar, the repr
  of a plotting object (`<matplotlib.legend.Legend at ...>`, `<Figure size ...>`, `[<matplotlib.lines.Line2D ...>]`);
- a float printed with 8 or more significant digits (`0.7992972632249196`): round it;
- raw HTML printed as text (`<span style=...>` shown literally instead of rendered);
- a script or stylesheet loaded from another host (a CDN): offline, what it renders is missing;
- `NoneType=None` in a signature (a parameter with default `None` and no annotation: annotate it, `x:int|None=None`);
- a page that is not in the sidebar (index.html's rendered sidebar), or a sidebar entry (_proc/sidebar.yml) with no
  page.

    python tools/check_site.py [_proc/_docs]    # exit 1 if anything is found, 2 if Chromium cannot be run

No page is excused as a whole (KNOWN may name single excerpts, each with its reason; it is empty). Chromium
(`chromium`, or the program named by $CHROMIUM) is required: without it the check stops with exit 2 after the HTML
checks rather than guess widths from the text, which misjudged them (Debian: `apt-get install chromium`; .ci/run
installs it). One browser, driven over the DevTools protocol on a pipe, loads every page in turn (~30 s for 57).
"""
import base64, html, json, os, re, shutil, struct, subprocess, sys, tempfile
from collections import Counter
from pathlib import Path
from urllib.parse import unquote, urlparse
from html.parser import HTMLParser

WINDOW = (1280, 900)  # px: the browser window the pages are measured in
MIN_TEXT_PX, SMALL_PT = 8, 8  # a figure's 8-pt text must show at least 8 px high
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
SITE_URL = "https://depthprune.github.io/depthprune_nb/"  # links to it are links inside the site
SIDEBAR_EXEMPT = {}   # page: why it is not in the sidebar (none)
# Single excerpts that cannot be fixed yet: (page, what, excerpt, why), each field given. Whole pages are never excused.
KNOWN = []


# ---------------------------------------------------------------------------------------------------------------
# Reading a page

class Page(HTMLParser):
    "Ids, links, sidebar links, and the blocks a reader sees: <pre> blocks, cell outputs; each knows if it is output."
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids, self.hrefs, self.sidebar, self.stack = set(), [], [], []
        self.pres, self.outputs = [], []
    def _in(self, pred): return any(pred(t, c, i) for t, c, i in self.stack)
    def _in_output(self): return self._in(lambda t, c, i: any(k.startswith("cell-output") for k in c))
    def handle_starttag(self, tag, attrs):
        a = dict(attrs); cls = (a.get("class") or "").split()
        if "id" in a: self.ids.add(a["id"])
        if tag == "a" and a.get("href"):
            self.hrefs.append(a["href"])
            if self._in(lambda t, c, i: i == "quarto-sidebar"): self.sidebar.append(a["href"])
        if tag in VOID: return
        out = self._in_output()
        if tag == "pre": self.pres.append(dict(cls=cls, out=out, text=[]))
        if tag == "div" and any(k.startswith("cell-output") for k in cls) and not out: self.outputs.append([])
        self.stack.append((tag, cls, a.get("id")))
    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID and self.stack: self.stack.pop()
    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, -1, -1):  # close up to the matching tag (tolerates unclosed <p>, <li>)
            if self.stack[i][0] == tag: del self.stack[i:]; break
    def handle_data(self, d):
        if self._in(lambda t, c, i: t == "pre") and self.pres: self.pres[-1]["text"].append(d)
        if self._in_output() and self.outputs: self.outputs[-1].append(d)


def read_site(site):
    "Every page of the site: {path: (parsed Page, raw html)}."
    pages = {}
    for f in sorted(site.rglob("*.html")):
        raw = f.read_text(errors="replace"); p = Page(); p.feed(raw); pages[f] = (p, raw)
    return pages


def page_text(raw):
    "What a reader can read on a page: the HTML without its tags (highlighted code joined up again), unescaped."
    body = re.sub(r"(?s)<(script|style)\b.*?</\1>", " ", raw)
    return html.unescape(re.sub(r"<[^>]+>", "", body))


def excerpt(text, m, width=40):
    "The match `m` in `text` with a little context, on one line."
    s = text[max(0, m.start() - width):m.end() + width]
    return re.sub(r"\s+", " ", s).strip()


# ---------------------------------------------------------------------------------------------------------------
# Checks on the HTML

LEAKS = [  # what the build machine leaves in a cell's output: (what, pattern)
    ("temporary path", r"(?:/tmp|/var/folders|/private/var)/\S*"),
    ("home or install path", r"(?:/root|/home/\w+|/Users/\w+)/\S+|\S*(?:site|dist)-packages\S*"),
    ("warning", r"\b\w*Warning: .{0,60}"),
    ("memory address", r"\bat 0x[0-9a-fA-F]{6,}"),
    ("progress bar", r"[\d.]+\s?(?:it|s/it|B|kB|MB)/s\]|\|#{3,}"),
    ("raw HTML printed as text",
     r"</?(?:span|div|p|b|i|br|table|tr|td|th|pre|code|a|img|font|style)(?:\s+[\w-]+=[^>]{0,40}>?|\s*/?>)"),
]
REPRS = re.compile(  # the value of a plotting call shown as an output
    r"\[?<(?:matplotlib|mpl_toolkits|seaborn)\.[^>\n]*>\]?|<Figure size [^>\n]*>|<(?:Axes|AxesSubplot)[:\s][^>\n]*>"
    r"|^Text\(-?[\d.]+, -?[\d.]+, .*\)$|<[\w.]+ object at 0x[0-9a-fA-F]+>", re.M)
FLOAT = re.compile(r"(?<![\w.])-?(\d+)\.(\d+)(?:[eE][-+]?\d+)?(?![\w.])")
SHARED = re.compile(r"\.\./shared\b|\bshared/data\b")
CALL_SELF = re.compile(r"Call self as a function\.?")
# A name `tempfile` made: `tmp` or a prefix ending in _ or - (`tiny_opt_`), then 8 characters of [a-z0-9_]
TEMP_NAME = re.compile(r"\b(?:tmp|[A-Za-z][\w-]*?[_-])([a-z0-9_]{8})\b")


def random_suffix(s):
    """Whether the 8 characters `s` read as `tempfile`'s random ones (`bvlusw2a`, `67hr20sz`, `2qphodj_`) rather than
    words (`by_start`, `instruct`, `bfloat16`, `135m_ins`). Letters and digits mixed other than as a word and a number
    are random; a suffix of letters only is random when a part of it cannot be a word (5+ letters without a vowel, or 5
    consonants in a row); one in 20 random suffixes is all letters that could be a word, and is missed."""
    for part in filter(None, s.split("_")):
        if re.search(r"\d", part) and re.search(r"[a-z]", part):
            if not re.fullmatch(r"[a-z]+\d+|\d+[a-z]{1,2}|\d+[a-z]\d+", part): return True
        elif re.fullmatch(r"[a-z]+", part) and len(part) >= 5:
            if not re.search(r"[aeiouy]", part) or re.search(r"[bcdfghjklmnpqrstvwxz]{5}", part): return True
    return False


def temp_names(text):
    "Matches in `text` of a name with a random 8-character suffix (`tiny_opt_bvlusw2a`)."
    return [m for m in TEMP_NAME.finditer(text) if random_suffix(m.group(1))]


def long_floats(text):
    for m in FLOAT.finditer(text):
        if len((m.group(1) + m.group(2)).lstrip("0")) >= 8: yield m.group(0)


def check_links(site, pages, f, p, raw):
    "Links to pages or anchors that do not exist; markdown links left raw."
    bad, files = [], {g.resolve(): q for g, (q, _) in pages.items()}
    for h in p.hrefs:
        if h.startswith(SITE_URL): h = "/" + h[len(SITE_URL):]
        if h.startswith(("http", "mailto:", "javascript:")) or "#" not in h: continue
        path, anchor = h.split("#", 1)
        target = ((site / path[1:]) if path.startswith("/") else (f.parent / path)).resolve() if path else f.resolve()
        if target not in files: bad.append((h, "missing page")); continue
        if anchor and anchor not in files[target].ids: bad.append((h, "missing anchor"))
    bad += [(r[:80], "raw markdown link") for r in re.findall(r"\[<code>[^<]+</code>\]\([^)]+\)|\[`[^`]+`\]\(", raw)]
    return bad


def check_outputs(p):
    "The build machine in a cell's output, plotting reprs, long floats, HTML shown as text."
    bad = []
    for chunks in p.outputs:
        text = "".join(chunks)
        reprs = [m.span() for m in REPRS.finditer(text)]
        bad += [(text[a:b][:80], "stray repr of a plotting call") for a, b in reprs]
        for what, pat in LEAKS:
            for m in re.finditer(pat, text):
                if any(a <= m.start() < b for a, b in reprs): continue  # reported as a repr
                bad.append((m.group(0)[:80], what))
        bad += [(x, "float with 8+ significant digits") for x in long_floats(text)]
    return bad


def check_text(raw):
    "Anywhere in a page (prose, code, signatures, outputs): leaks of the build machine and undocumented calls."
    text, bad = page_text(raw), []
    bad += [(excerpt(text, m), '"Call self as a function." (a __call__ without a docstring)')
            for m in CALL_SELF.finditer(text)]
    bad += [(m.group(0), "temporary name (tempfile's random suffix): use a fixed name") for m in temp_names(text)]
    found = {excerpt(text, m) for m in SHARED.finditer(text)}
    found = found or {excerpt(raw, m) for m in SHARED.finditer(raw)}  # in a link or an attribute
    bad += [(x, "the developers' data folder (../shared) named on a page") for x in sorted(found)]
    return bad


def check_offline(raw):
    "Scripts and stylesheets a page loads from the network."
    tags = re.findall(r"<script\b[^>]*\bsrc=\"(https?:[^\"]+)\"|<link\b[^>]*\bhref=\"(https?:[^\"]+)\"[^>]*>", raw)
    urls = [a or b for a, b in tags if a or re.search(r"<link\b[^>]*rel=\"stylesheet\"[^>]*" + re.escape(b), raw)]
    return [(f"{len(urls)} file(s) from " + ", ".join(sorted({re.sub(r"^https?://([^/]+).*", r"\1", u) for u in urls})),
             "scripts or styles loaded from the network: missing offline")] if urls else []


def check_signatures(p):
    "Parameters shown as `NoneType=None` (a default None without an annotation)."
    bad = []
    for pre in p.pres:
        text = "".join(pre["text"])
        if "NoneType" in text:
            bad.append((re.search(r"[^\n]*NoneType[^\n]*", text).group(0).strip()[:80], "NoneType in a signature"))
    return bad


def check_headings(raw):
    "Headings that repeat the entry right below them (a `fast_search` heading, then the fast_search entry)."
    heads = [re.sub(r"<[^>]+>", "", m.group(2)).strip() for m in re.finditer(r"<h([1-4])[^>]*>(.*?)</h\1>", raw, re.S)]
    return [(a, "repeated heading") for a, b in zip(heads, heads[1:]) if a == b]


def sidebar_yml_pages(site):
    "The pages the processed sidebar (_proc/sidebar.yml, beside the site) lists, as paths relative to the site."
    yml = site.parent / "sidebar.yml"
    if not yml.exists(): return None
    return [re.sub(r"\.(ipynb|qmd|md)$", ".html", x.strip())
            for x in re.findall(r"^\s*-\s*(?:href:\s*)?([\w./-]+\.(?:ipynb|qmd|md))\s*$", yml.read_text(), re.M)]


def check_sidebar(site, pages):
    "Every page in the sidebar a reader sees (index.html's), every sidebar entry a page: [(page, excerpt, what)]."
    bad, rels = [], {str(f.relative_to(site)) for f in pages}
    index = site / "index.html"
    if index not in pages: return [("index.html", "", "no index.html: the sidebar cannot be read")]
    listed = {str((site / h.split("#")[0]).resolve().relative_to(site.resolve())) for h in pages[index][0].sidebar
              if not h.startswith(("http", "mailto:")) and h.split("#")[0]}
    for r in sorted(rels - listed - set(SIDEBAR_EXEMPT)): bad.append((r, "", "page not in the sidebar"))
    for r in sidebar_yml_pages(site) or []:
        if r not in rels: bad.append(("sidebar.yml", r, "sidebar entry with no page"))
    return bad


def static_problems(site, pages):
    "All the checks that read the HTML: [(page, excerpt, what)]."
    bad = []
    for f, (p, raw) in pages.items():
        rel = str(f.relative_to(site))
        for check in (lambda: check_links(site, pages, f, p, raw), lambda: check_outputs(p), lambda: check_text(raw),
                      lambda: check_offline(raw), lambda: check_signatures(p), lambda: check_headings(raw)):
            bad += [(rel, *b) for b in check()]
    return bad + check_sidebar(site, pages)


# ---------------------------------------------------------------------------------------------------------------
# Measuring in Chromium: one headless browser, driven over the DevTools protocol on a pipe (no extra package)

def find_chromium():
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if name and shutil.which(name): return shutil.which(name)
    return None


class Browser:
    "Headless Chromium on the DevTools protocol (--remote-debugging-pipe: it reads fd 3, writes fd 4)."
    def __init__(self, exe):
        self.profile = tempfile.mkdtemp(prefix="check-site-chromium-")
        self.log = open(Path(self.profile) / "stderr.log", "w+b")  # a file: a full pipe would stall Chromium
        r_in, w_in = os.pipe(); r_out, w_out = os.pipe()
        def fds(): a, b = os.dup(r_in), os.dup(w_out); os.dup2(a, 3); os.dup2(b, 4)  # dup2 leaves them inheritable
        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--mute-audio",
             "--no-first-run", f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--user-data-dir={self.profile}",
             "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.log, close_fds=False,
            preexec_fn=fds)
        os.close(r_in); os.close(w_out)
        self.w, self.r, self.n, self.buf = os.fdopen(w_in, "wb", 0), os.fdopen(r_out, "rb", 0), 0, b""
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.send("Emulation.setDeviceMetricsOverride", self.session, width=WINDOW[0], height=WINDOW[1],
                  deviceScaleFactor=1, mobile=False)

    def send(self, method, session=None, **params):
        "Send one command and wait for its answer (events in between are dropped)."
        self.n += 1; msg = dict(id=self.n, method=method, params=params)
        if session: msg["sessionId"] = session
        try: self.w.write(json.dumps(msg).encode() + b"\0")
        except BrokenPipeError: raise RuntimeError(f"chromium exited: {self.stderr()}")
        while True:
            while b"\0" not in self.buf:
                chunk = self.r.read(1 << 20)
                if not chunk: raise RuntimeError(f"chromium exited: {self.stderr()}")
                self.buf += chunk
            raw, self.buf = self.buf.split(b"\0", 1); m = json.loads(raw)
            if m.get("id") == self.n:
                if "error" in m: raise RuntimeError(f"{method}: {m['error']}")
                return m["result"]

    def stderr(self):
        self.log.seek(0); return self.log.read().decode(errors="replace")[-2000:]

    def evaluate(self, url, script):
        "Load `url` and return the value of `script` (an expression) once the page, its images and fonts are loaded."
        for _ in range(3):
            self.send("Page.navigate", self.session, url=url)
            expr = ("new Promise(res => { const go = () => document.fonts.ready.then(() => requestAnimationFrame(() =>"
                    f" res(JSON.stringify({{href: location.href, value: ({script})}})))); "
                    "document.readyState === 'complete' ? go() : (addEventListener('load', go), setTimeout(go, 30000));"
                    " })")
            r = self.send("Runtime.evaluate", self.session, expression=expr, awaitPromise=True, returnByValue=True)
            if "exceptionDetails" in r: raise RuntimeError(f"{url}: {r['exceptionDetails']}")
            v = json.loads(r["result"]["value"])
            if v["href"] == url: return v["value"]
        raise RuntimeError(f"{url}: the page did not load (still at {v['href']})")

    def close(self):
        try: self.send("Browser.close")
        except RuntimeError: pass
        try: self.proc.wait(10)
        except subprocess.TimeoutExpired: self.proc.kill(); self.proc.wait()
        self.log.close(); shutil.rmtree(self.profile, ignore_errors=True)


MEASURE_JS = r"""(() => {
  const main = document.querySelector('main.content') || document.body;
  const px = (el, p) => parseFloat(getComputedStyle(el)[p]) || 0;
  const inner = el => el.clientWidth - px(el, 'paddingLeft') - px(el, 'paddingRight');
  const where = el => { const c = el.closest('.cell[id], section[id]'); return c ? '#' + c.id : ''; };
  const res = {column: inner(main), pres: [], tables: [], imgs: []};
  for (const pre of main.querySelectorAll('pre')) {
    const box = pre.getBoundingClientRect(); if (!box.width) continue;          // hidden
    const parent = pre.parentElement.getBoundingClientRect().right - px(pre.parentElement, 'paddingRight');
    const scrolls = pre.scrollWidth > pre.clientWidth + 1 || box.right > parent + 1;  // wrapped lines never do
    const right = box.left + pre.clientLeft + pre.clientWidth - px(pre, 'paddingRight');
    const code = pre.querySelector('code') || pre;
    const lh = parseFloat(getComputedStyle(code).lineHeight) || px(code, 'fontSize') * 1.2;
    const probe = document.createElement('span');                               // width of one character
    probe.style.cssText = 'position:absolute;white-space:pre;visibility:hidden'; probe.textContent = '0'.repeat(100);
    code.appendChild(probe); const cw = probe.getBoundingClientRect().width / 100; probe.remove();
    const nodes = [], walker = document.createTreeWalker(pre, NodeFilter.SHOW_TEXT); let text = '';
    for (let n; (n = walker.nextNode()); ) { nodes.push([n, text.length]); text += n.data; }
    const at = (i, end) => { let k = nodes.length - 1;                           // (node, offset) of character i
      while (k > 0 && (nodes[k][1] > i || (end && nodes[k][1] === i))) k--; return [nodes[k][0], i - nodes[k][1]]; };
    const entry = {where: where(pre), code: pre.classList.contains('sourceCode'),
                   out: !!pre.closest('[class*="cell-output"]'), width: Math.round(inner(pre)),
                   font: px(code, 'fontSize'), cols: Math.floor(inner(pre) / cw), lines: []};
    let start = 0;
    for (const line of text.split('\n')) {
      const s = start, e = start + line.replace(/\s+$/, '').length; start += line.length + 1;
      if (e <= s || !line.trim()) continue;
      const r = document.createRange(); r.setStart(...at(s, false)); r.setEnd(...at(e, true));
      const rects = [...r.getClientRects()].filter(q => q.width > 0);
      const tops = rects.map(q => q.top).sort((a, b) => a - b);
      const rows = tops.filter((t, k) => k === 0 || t - tops[k - 1] > lh / 2).length;
      const over = scrolls ? Math.max(0, ...rects.map(q => q.right - right)) : 0;
      if ((rows > 1 || over > 0.5) && entry.lines.length < 200)
        entry.lines.push({text: line, rows, over: Math.round(over)});
    }
    res.pres.push(entry);
  }
  for (const t of main.querySelectorAll('table')) {
    const w = t.getBoundingClientRect().width, box = inner(t.parentElement);
    if (w > Math.min(box, res.column) + 0.5)
      res.tables.push({where: where(t), width: Math.round(w), box: Math.round(Math.min(box, res.column)),
                       head: (t.rows[0] ? t.rows[0].innerText : '').replace(/\s+/g, ' ').trim().slice(0, 60)});
  }
  res.tex = [...main.querySelectorAll('.math')].filter(e => !e.querySelector('.katex, math, mjx-container, svg'))
    .map(e => ({where: where(e), text: e.textContent.trim().slice(0, 60)}));
  for (const img of main.querySelectorAll('img')) {
    const w = img.getBoundingClientRect().width;
    res.imgs.push({where: where(img), src: img.currentSrc || img.src, shown: w, natural: img.naturalWidth,
                   naturalHeight: img.naturalHeight});
  }
  return res;
})()"""


def measure(site, files, exe):
    "{page: what MEASURE_JS found on it}, each page loaded in one headless Chromium."
    b = Browser(exe)
    try: return {f: b.evaluate(f.resolve().as_uri(), MEASURE_JS) for f in files}
    finally: b.close()


def png_info(data: bytes):
    "Width, height and dpi (None if the PNG does not say) of a PNG; None if `data` is not a PNG."
    if data[:8] != b"\x89PNG\r\n\x1a\n": return None
    w, h = struct.unpack(">II", data[16:24]); i = data.find(b"pHYs"); dpi = None
    if i > 0:
        x, _, unit = struct.unpack(">IIB", data[i + 4:i + 13])
        if unit == 1: dpi = x * 0.0254
    return w, h, dpi


def image_bytes(src):
    if src.startswith("data:image/png;base64,"): return base64.b64decode(src.split(",", 1)[1])
    if src.startswith("file://"):
        path = Path(unquote(urlparse(src).path))
        if path.exists(): return path.read_bytes()
    return None


ALIGNED = re.compile(r"\S {2,}\S|^ {2,}\S")  # a line laid out in columns: words apart by 2+ spaces, or indented


def measured_problems(m):
    "What a reader would see go wrong on one measured page: [(excerpt, what)]."
    bad = []
    for pre in m["pres"]:
        for ln in pre["lines"]:
            text = ln["text"].strip()[:60]
            if ln["over"] > 0.5:
                kind = "code line" if pre["code"] else "output line"
                bad.append((f"{pre['where']} {len(ln['text'])} chars: {text}",
                            f"{kind} runs {ln['over']} px past its box ({pre['cols']} characters fit)"))
            elif pre["out"] and not pre["code"] and ALIGNED.search(ln["text"]):
                bad.append((f"{pre['where']} {len(ln['text'])} > {pre['cols']} chars: {text}",
                            f"output line laid out in columns wraps onto {ln['rows']} lines"))
    if m["tex"]: bad.append((f"{len(m['tex'])} equation(s), first: {m['tex'][0]['text']}", "equations shown as raw TeX"))
    for t in m["tables"]:
        bad.append((f"{t['where']} {t['width']} > {t['box']} px: {t['head']}", "table wider than its box"))
    for im in m["imgs"]:
        info = png_info(image_bytes(im["src"]) or b"")
        if not info or not info[2] or not im["natural"] or not im["shown"]: continue  # not a PNG figure with a dpi
        w, h, dpi = info
        scale = im["shown"] / im["natural"]
        text_px = SMALL_PT / 72 * dpi * scale
        if text_px < MIN_TEXT_PX:
            fit = im["shown"] / (72 * MIN_TEXT_PX / SMALL_PT)
            bad.append((f"{im['where']} figure {w}x{h} px at {dpi:.0f} dpi ({w/dpi:.1f} in) "
                        f"shown {im['shown']:.0f} px wide",
                        f"8-pt text shows {text_px:.1f} px high (< {MIN_TEXT_PX}): draw it <= {fit:.1f} in wide"))
    return bad


def layout_summary(measured):
    "The column width and the characters an output line holds, as measured (the most common values)."
    cols = Counter(round(m["column"]) for m in measured.values())
    out = Counter((p["width"], p["cols"], p["font"]) for m in measured.values() for p in m["pres"]
                  if p["out"] and not p["code"])
    if not cols: return "no page measured"
    s = f"measured at a {WINDOW[0]}-px window: content column {cols.most_common(1)[0][0]} px"
    if out:
        w, c, fs = out.most_common(1)[0][0]
        s += f"; an output <pre> is {w} px wide at {fs:g} px: {c} characters a line"
    return s


# ---------------------------------------------------------------------------------------------------------------

def known(b):
    return next((why for page, what, start, why in KNOWN
                 if page and what and start and b[0] == page and b[2] == what and str(b[1]).startswith(start)), None)


def main(argv):
    site = Path(argv[0] if argv else "_proc/_docs")
    if not (site / "index.html").exists():
        sys.exit(f"check_site: no site at {site} (build it: bash tools/build_docs.sh)")
    pages = read_site(site)
    bad = static_problems(site, pages)
    exe = find_chromium()
    if exe is None:
        print("check_site: Chromium not found (install it: apt-get install chromium, or set $CHROMIUM): the widths of "
              "outputs, tables and figures are measured in it, not guessed.", file=sys.stderr)
        for b in sorted(set(bad)): print(*b, sep="  |  ")
        return 2
    try: measured = measure(site, list(pages), exe)
    except RuntimeError as e:
        print(f"check_site: could not measure the pages in {exe}: {e}", file=sys.stderr); return 2
    for f, m in measured.items(): bad += [(str(f.relative_to(site)), *b) for b in measured_problems(m)]
    print(layout_summary(measured))
    bad = sorted(set(bad))
    for b in bad:
        if known(b): print(*b, "known: " + known(b), sep="  |  ")
    bad = [b for b in bad if not known(b)]
    for b in bad: print(*b, sep="  |  ")
    print(len(bad), "problems")
    return 1 if bad else 0


if __name__ == "__main__": sys.exit(main(sys.argv[1:]))
