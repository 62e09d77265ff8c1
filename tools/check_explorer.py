#!/usr/bin/env python
"""Check the explorer widget in a real JupyterLab, driven by headless Chromium.

    python tools/check_explorer.py --out /tmp/explorer_shots [--readme_image nbs/images/explorer.png]

What it does: writes a notebook into a temporary folder that saves a tiny random-weight OPT,
searches it for n = 1, 2, 3 (random token windows: seconds on a CPU) and calls `explore`; starts
JupyterLab on 127.0.0.1 (random token, no browser, nothing from the network); opens the notebook
in Chromium and runs it; then, as a user would, moves the slider, presses "Prune and save" into
a folder that already holds a file of the user's, ticks "overwrite" when told to and presses
again. It checks that the table and the plot change with the slider, that the refusal offers
the "overwrite" box, that the pruned model and prune_result.json land while the user's file
stays, and that JupyterLab's Log Console stays free of the save's output. Screenshots of each
step go to --out. Exit code 0 when every check passes, 1 otherwise.

It installs nothing. It needs, on Debian: `apt-get install chromium chromium-driver`, and from
PyPI: `pip install selenium jupyterlab` (plus this package's own requirements: ipywidgets,
ipykernel). It is not part of CI (it takes about a minute and a browser); rerun it after
changing the explorer.
"""
from __future__ import annotations
import argparse, json, os, secrets, shutil, signal, socket, subprocess, sys, tempfile, time, traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1400,1000", "--hide-scrollbars"]

NOTEBOOK_CELLS = [
    """import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from depthprune_nb import explore, search_each_n
from depthprune_nb.testing import save_tiny_model""",
    """model_dir = save_tiny_model("tiny-opt", family="opt", num_layers=6)
model, tok = AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)
g = torch.Generator().manual_seed(0)
data = [torch.randint(0, model.config.vocab_size, (1, 64), generator=g) for _ in range(4)]
results = search_each_n(model, data, [1, 2, 3], proxy=False)
{n: r.deleted_layers for n, r in results.items()}""",
    """explore(results, model, tok, save_dir="pruned_check")""",
]


SHOW_BARS = """import functools, depthprune_nb.explorer as E  # --show_bars: the save with transformers' bar on
E.save_pruned = functools.partial(E.save_pruned, progress=True)"""


def write_notebook(path:Path, show_bars:bool=False):
    cells = [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": [],
              "source": src} for i, src in enumerate(NOTEBOOK_CELLS[:1] + [SHOW_BARS] * show_bars + NOTEBOOK_CELLS[1:])]
    nb = {"cells": cells, "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
          "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb, indent=1))


def free_port()->int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def start_lab(work:Path, port:int, token:str)->subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY")}
    env = {**env, "PYTHONPATH": os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "JUPYTER_CONFIG_DIR": str(work / ".jupyter"), "JUPYTER_RUNTIME_DIR": str(work / ".runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(work / ".lab-settings"), "JUPYTERLAB_WORKSPACES_DIR": str(work / ".lab-workspaces")}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--ServerApp.root_dir={work}", f"--IdentityProvider.token={token}", "--ServerApp.password=",
           "--ServerApp.open_browser=False", "--expose-app-in-browser",
           "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           "--LabApp.extension_manager=readonly"] + (["--allow-root"] if os.geteuid() == 0 else [])
    log = open(work / "jupyterlab.log", "w")
    return subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_server(port:int, proc:subprocess.Popen, timeout:float=90):
    import urllib.request
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None: raise RuntimeError(f"JupyterLab exited with code {proc.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api", timeout=2); return
        except Exception: time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer on port {port} within {timeout} s")


def make_driver(profile:Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for f in CHROME_FLAGS + [f"--user-data-dir={profile}"]: opts.add_argument(f)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=opts)


class Check:
    "Collects pass/fail lines; `ok` is False once any check failed."
    def __init__(self): self.ok, self.lines = True, []
    def __call__(self, cond:bool, what:str):
        self.lines.append(f"{'PASS' if cond else 'FAIL'}  {what}"); print(self.lines[-1], flush=True)
        self.ok = self.ok and bool(cond)
        return cond


def wait_until(fn, timeout:float, what:str, poll:float=0.25):
    t0, last = time.time(), None
    while time.time() - t0 < timeout:
        try:
            v = fn()
            if v: return v
        except Exception as e: last = e
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}" + (f" (last error: {last})" if last else ""))


def drive(driver, url:str, work:Path, out:Path, check:Check, readme_image:Path|None):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    shot = lambda name: driver.save_screenshot(str(out / name))
    driver.get(url)
    wait_until(lambda: driver.execute_script("return !!(window.jupyterapp && window.jupyterapp.shell)"), 90, "JupyterLab to start")
    wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell"), 60, "the notebook to open")
    wait_until(lambda: "Idle" in driver.find_element(By.CSS_SELECTOR, ".jp-StatusBar-Widget, #jp-main-statusbar").text
               or driver.execute_script("const w = window.jupyterapp.shell.currentWidget;"
                                        "return !!(w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel"
                                        " && w.sessionContext.session.kernel.status === 'idle');"), 120, "the kernel to start")
    for b in driver.find_elements(By.XPATH, "//button[normalize-space(.)='No']"): b.click() # "get Jupyter news?" toast
    driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    table = lambda: driver.find_element(By.CSS_SELECTOR, ".jupyter-widgets.widget-html table").text
    wait_until(lambda: "deleting 1 of 6 layers" in driver.find_element(By.CSS_SELECTOR, ".widget-vbox").text, 300,
               "the explorer widget to render")
    driver.execute_script("document.querySelector('.widget-vbox').scrollIntoView()")
    time.sleep(1)
    widget = driver.find_element(By.CSS_SELECTOR, ".widget-vbox")
    shot("1_initial.png")
    img = lambda: driver.find_element(By.CSS_SELECTOR, ".widget-vbox img")
    table1, plot1, text1 = table(), img().screenshot_as_png, widget.text
    check("deleting 1 of 6 layers" in text1 and "Chosen: layer " in text1, "the widget shows n = 1 first, its choice as 'layer k'")
    check(len(table1.splitlines()) == 1 + 6, f"the table for n = 1 has a header and 6 windows ({len(table1.splitlines()) - 1} rows)")

    handle = driver.find_element(By.CSS_SELECTOR, ".widget-slider .noUi-handle")
    handle.click(); handle.send_keys(Keys.ARROW_RIGHT)
    wait_until(lambda: "deleting 2 of 6 layers" in widget.text, 60, "the table to follow the slider to n = 2")
    time.sleep(1)  # the PNG arrives with the table; let the browser paint it
    table2, plot2 = table(), img().screenshot_as_png
    shot("2_slider_n2.png")
    check(table2 != table1 and len(table2.splitlines()) == 1 + 5, "moving the slider to n = 2 redraws the table (5 windows)")
    check("–" in table2 and "[" not in table2, "layer ranges in the table are written as '1–2'")
    check(plot2 != plot1, "moving the slider redraws the plot")
    if readme_image is not None:
        readme_image.parent.mkdir(parents=True, exist_ok=True)
        widget.screenshot(str(readme_image))

    button = driver.find_element(By.XPATH, "//button[contains(., 'Prune and save')]")
    button.click()
    status = lambda: driver.find_elements(By.CSS_SELECTOR, ".widget-vbox > .widget-html")[-1].text
    wait_until(lambda: "not pruned" in status(), 60, "the refusal of a folder holding the user's file")
    shot("3_refused.png")
    check('tick "overwrite"' in status() and "not empty" in status(), f"the refusal offers the overwrite box: {status()!r}")
    check(not (work / "pruned_check" / "config.json").exists(), "nothing was saved into the refused folder")

    driver.find_element(By.CSS_SELECTOR, ".widget-checkbox input[type=checkbox]").click()
    button.click()
    wait_until(lambda: "saved to" in status(), 120, "the save to finish")
    shot("4_saved.png")
    saved = work / "pruned_check"
    res = json.loads((saved / "prune_result.json").read_text()) if (saved / "prune_result.json").exists() else {}
    cfg = json.loads((saved / "config.json").read_text()) if (saved / "config.json").exists() else {}
    check(res.get("delete_layer_num") == 2 and cfg.get("num_hidden_layers") == 4,
          f"the pruned model (n = 2, 4 layers) is saved: {res.get('deleted_layers')}, {cfg.get('num_hidden_layers')} layers")
    check((saved / "notes.md").read_text() == "the user's notes", "the user's file in that folder is kept")
    check(button.get_attribute("disabled") is not None, "the button is disabled after pruning")

    driver.execute_script("window.jupyterapp.commands.execute('logconsole:open')")
    log_text = wait_until(lambda: driver.find_element(By.CSS_SELECTOR, ".jp-LogConsolePanel").text or " ", 30, "the Log Console")
    shot("5_log_console.png")
    check("No log messages" in log_text and "Writing model shards" not in log_text,
          f"nothing in JupyterLab's Log Console: {log_text.strip()[:200]!r}")


def main(argv=None)->int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for the screenshots")
    p.add_argument("--readme_image", default=None, help="also save a screenshot of the widget here (PNG)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (notebook, model, JupyterLab log)")
    p.add_argument("--show_bars", action="store_true", help="save with transformers' progress bar on: the Log Console "
                   "check must then FAIL (a check of this check)")
    args = p.parse_args(argv)
    out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="check_explorer_"))
    write_notebook(work / "explorer_check.ipynb", args.show_bars)
    (work / "pruned_check").mkdir(); (work / "pruned_check" / "notes.md").write_text("the user's notes")
    port, token, check = free_port(), secrets.token_hex(16), Check()
    lab = driver = None
    try:
        lab = start_lab(work, port, token)
        wait_for_server(port, lab)
        driver = make_driver(work / ".chromium-profile")
        drive(driver, f"http://127.0.0.1:{port}/lab/tree/explorer_check.ipynb?token={token}", work, out, check,
              Path(args.readme_image) if args.readme_image else None)
    except Exception:
        traceback.print_exc()
        check(False, "the check ran to the end")
        if driver is not None:
            try: driver.save_screenshot(str(out / "failure.png"))
            except Exception: pass
    finally:
        if driver is not None: driver.quit()
        if lab is not None:
            try:
                os.killpg(lab.pid, signal.SIGTERM); lab.wait(20)
            except ProcessLookupError: pass
            except subprocess.TimeoutExpired: os.killpg(lab.pid, signal.SIGKILL)
        if args.keep: print(f"kept {work}")
        else: shutil.rmtree(work, ignore_errors=True)
    print(f"{'all checks passed' if check.ok else 'FAILED'}; screenshots in {out}")
    return 0 if check.ok else 1


if __name__ == "__main__":
    sys.exit(main())
