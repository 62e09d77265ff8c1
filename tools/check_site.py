"""Check the built docs site: links to anchors that do not exist, markdown links left raw (e.g. inside a
rendered signature), and headings that repeat the entry right below them.

    python tools/check_site.py [_proc/_docs]    # exit 1 if anything is found
"""
import re, sys
from pathlib import Path
from html.parser import HTMLParser
site = Path(sys.argv[1] if len(sys.argv) > 1 else "_proc/_docs")
class P(HTMLParser):
    def __init__(self):
        super().__init__(); self.ids, self.hrefs = set(), []
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a: self.ids.add(a["id"])
        if tag == "a" and a.get("href"): self.hrefs.append(a["href"])
pages = {}
for f in site.rglob("*.html"):
    p = P(); p.feed(f.read_text(errors="replace")); pages[f] = p
bad = []
for f, p in pages.items():
    for h in p.hrefs:
        for host in ("https://depthprune.github.io/depthprune_nb/",):
            if h.startswith(host): h = "/" + h[len(host):]
        if h.startswith(("http", "mailto:", "javascript:")) or "#" not in h: continue
        path, anchor = h.split("#", 1)
        target = ((site / path[1:]) if path.startswith("/") else (f.parent / path)).resolve() if path else f.resolve()
        tp = next((q for g, q in pages.items() if g.resolve() == target), None)
        if tp is None: bad.append((f.relative_to(site), h, "missing page")); continue
        if anchor and anchor not in tp.ids: bad.append((f.relative_to(site), h, "missing anchor"))
    raw = re.findall(r"\[<code>[^<]+</code>\]\([^)]+\)|\[`[^`]+`\]\(", f.read_text(errors="replace"))
    for r in raw: bad.append((f.relative_to(site), r[:80], "raw markdown link"))
for b in sorted(set(bad), key=str): print(*b, sep="  |  ")
print(len(set(bad)), "problems")
repeated = 0

# headings that repeat the entry right below them ("fast_search" heading, then the fast_search entry)
for f in site.rglob("*.html"):
    heads = [re.sub(r"<[^>]+>", "", m.group(2)).strip() for m in re.finditer(r"<h([1-4])[^>]*>(.*?)</h\1>", f.read_text(errors="replace"), re.S)]
    for a, b in zip(heads, heads[1:]):
        if a == b: print(f.relative_to(site), " |  repeated heading", a); repeated += 1

sys.exit(1 if bad or repeated else 0)
