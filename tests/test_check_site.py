"tools/check_site.py finds each kind of problem on a made-up two-page site, and passes a clean page."
import importlib.util, itertools, struct, zlib
from pathlib import Path
import pytest

spec = importlib.util.spec_from_file_location("check_site", Path(__file__).parents[1] / "tools" / "check_site.py")
cs = importlib.util.module_from_spec(spec); spec.loader.exec_module(cs)
needs_chromium = pytest.mark.skipif(cs.find_chromium() is None,
    reason="Chromium is not installed (apt-get install chromium; .ci/run installs it): the layout checks need it")


def png(width, height, dpi):
    "A white PNG of `width` x `height` px that says it is drawn at `dpi` (as matplotlib's savefig writes)."
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\0" + b"\xff" * width for _ in range(height))
    ppm = round(dpi / 0.0254)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"pHYs", struct.pack(">IIB", ppm, ppm, 1)) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


STYLE = """<style>body { margin: 0; font: 16px sans-serif; } main.content { width: 600px; padding: 0 10px; }
.cell-output-stdout > pre { font: 13.6px monospace; white-space: pre-wrap; overflow-wrap: anywhere; }
pre.nowrap { white-space: pre; overflow: auto; } .sd-table { overflow-x: auto; } img { max-width: 100%; }</style>"""


cell_ids = itertools.count(1)


def page(body, sidebar=""):
    nav = f'<nav id="quarto-sidebar">{sidebar}</nav>' if sidebar else ""
    return f'<!doctype html><html><head>{STYLE}</head><body>{nav}<main class="content">{body}</main></body></html>'


def output(text, cls=""):
    "A cell's printed output, as nbdev renders it."
    return (f'<div class="cell" id="cell-{next(cell_ids)}"><div class="cell-output cell-output-stdout">'
            f'<pre class="{cls}"><code>{text}</code></pre></div></div>')


ROW = "model              n  deleted        PPL before   PPL after   change"  # a printed table's row, 68 characters


@pytest.fixture
def site(tmp_path):
    "index.html: clean, in the sidebar. bad.html: one of each problem, not in the sidebar. sidebar.yml: a page too many."
    (tmp_path / "sidebar.yml").write_text("website:\n  sidebar:\n    contents:\n      - index.ipynb\n      - gone.ipynb\n")
    tmp_path = tmp_path / "_docs"  # the site, beside the processed sidebar.yml as in _proc/
    (tmp_path / "images").mkdir(parents=True)
    (tmp_path / "images" / "small.png").write_bytes(png(500, 20, 100))   # 5 in wide, shown at its own size
    (tmp_path / "images" / "wide.png").write_bytes(png(2400, 20, 200))   # 12 in wide, shown 600 px: 8 pt -> 5.5 px
    (tmp_path / "index.html").write_text(page(
        "<h1>Clean</h1><p>Prose about tiny_opt_model and ppl_by_start.</p>" + output(ROW + "\n" + "short line, " * 20)
        + '<div class="sd-table"><table><tr><th>a</th><th>b</th></tr><tr><td>1</td><td>2</td></tr></table></div>'
        + '<img src="images/small.png"><p><span class="math inline"><math><mi>x</mi></math></span></p>', sidebar='<a href="index.html">Clean</a>'))
    (tmp_path / "bad.html").write_text(page(
        "<h1>Bad</h1><p>Call self as a function.</p><p>Saved to <code>tiny_opt_bvlusw2a</code>.</p>"
        '<pre class="sourceCode"><code>text_file = "../shared/data/wikitext-2-raw-v1/test.txt"</code></pre>'
        + output("&lt;matplotlib.legend.Legend at 0x7f3a2b1c0d90&gt;") + output("&lt;Figure size 640x480 with 1 Axes&gt;")
        + output(ROW + "   extra column") + output("x" * 120, cls="nowrap") + output("PPL 0.7992972632249196")
        + '<div class="sd-table"><table style="width:900px"><tr><th>wide</th></tr></table></div>'
        + '<img src="images/wide.png"><a href="#nowhere">dead</a><p><span class="math inline">\\(x^2\\)</span></p>'
        + '<script src="https://cdn.invalid/katex.min.js"></script>'))
    return tmp_path


def problems(site, page):
    return [b[1:] for b in cs.static_problems(site, cs.read_site(site)) if b[0] == page]


def test_random_suffixes():
    "tempfile's 8 random characters are told from words and numbers."
    for s in ["bvlusw2a", "67hr20sz", "2qphodj_", "ab12cd_x", "qwxzkvbt"]: assert cs.random_suffix(s), s
    for s in ["by_start", "instruct", "bfloat16", "with_bos", "135m_ins", "tokenize", "t_starts"]: assert not cs.random_suffix(s), s
    text = "tiny_opt_bvlusw2a tmpab12cd_x smollm2-135m-instruct ppl_by_start model_bfloat16 tiny_llama_67hr20sz"
    assert [m.group(0) for m in cs.temp_names(text)] == ["tiny_opt_bvlusw2a", "tmpab12cd_x", "tiny_llama_67hr20sz"]


def test_static_problems(site):
    "Leaks anywhere in a page, plotting reprs and long floats in outputs, dead anchors, pages not in the sidebar."
    assert problems(site, "index.html") == []
    whats = " / ".join(w for _, w in problems(site, "bad.html"))
    for kind in ["Call self as a function", "temporary name", "../shared", "missing anchor", "float with 8+",
                 "loaded from the network"]:
        assert kind in whats, kind
    found = [x for x, w in problems(site, "bad.html") if w.startswith("stray repr")]
    assert sorted(found) == ["<Figure size 640x480 with 1 Axes>", "<matplotlib.legend.Legend at 0x7f3a2b1c0d90>"]
    assert cs.check_sidebar(site, cs.read_site(site)) == [("bad.html", "", "page not in the sidebar"),
                                                          ("sidebar.yml", "gone.html", "sidebar entry with no page")]


def test_no_chromium_fails_loudly(site, monkeypatch, capsys):
    "Without Chromium the check stops with exit 2 and says why, rather than guess widths."
    monkeypatch.setattr(cs, "find_chromium", lambda: None)
    assert cs.main([str(site)]) == 2
    assert "Chromium not found" in capsys.readouterr().err


@needs_chromium
def test_measured_problems(site):
    "Measured in Chromium: a printed table's row that wraps, a line that runs out of its box, a wide table, small figure text."
    measured = cs.measure(site, [site / "index.html", site / "bad.html"], cs.find_chromium())
    assert cs.measured_problems(measured[site / "index.html"]) == []
    bad = cs.measured_problems(measured[site / "bad.html"])
    whats = [w for _, w in bad]
    assert sum("laid out in columns wraps onto 2 lines" in w for w in whats) == 1, bad
    assert sum(w.startswith("output line runs") for w in whats) == 1, bad
    assert any(x.endswith("900 > 600 px: wide") for x, w in bad if w == "table wider than its box"), bad
    assert ("1 equation(s), first: \\(x^2\\)", "equations shown as raw TeX") in bad, bad
    small = [w for w in whats if w.startswith("8-pt text shows")]
    assert small == ["8-pt text shows 5.6 px high (< 8): draw it <= 8.3 in wide"], bad
    col = measured[site / "index.html"]["column"]
    assert col == 600, col


@needs_chromium
def test_main_reports_and_exits_1(site, capsys):
    assert cs.main([str(site)]) == 1
    out = capsys.readouterr().out
    assert "content column 600 px" in out and "index.html  |" not in out, out
