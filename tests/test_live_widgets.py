"""The widgets in a live kernel, as a reader meets them: JupyterLab started headless on a free port, a real Chromium
driven by Playwright runs a notebook, moves the τ slider of the detection widget and switches the layer of the
attention widget, and the views must change. A screenshot of the detection widget after the slider moved is left in
tests/artifacts/ (ignored by git). Skips, saying why, without Playwright or Chromium."""
import json, os, re, shutil, socket, subprocess, sys, time, urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

NOTEBOOK_CELLS = [
    "import torch; torch.set_num_threads(1)\n"
    "from leaf_nb.world import load_world, is_correct\n"
    "from leaf_nb.saliency import detect, DetectConfig\n"
    "from leaf_nb.viz import detection_widget, attention_widget\n"
    "w = load_world(); rows = list(w.splits['math']['test'])[:24]\n"
    "det = detect(w.teacher, w.student, w.tokenizer, rows, 'det', DetectConfig(), check=is_correct, progress=False)",
    "detection_widget(det, rows)",
    "attention_widget(w.student, w.tokenizer, rows[:2])",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    "A JupyterLab server on a free local port, serving a folder with the test notebook; yields (url, token)."
    pytest.importorskip("playwright.sync_api", reason="the live-widget test needs the `playwright` package (pip install playwright)")
    if CHROMIUM is None: pytest.skip("no Chromium on this machine (apt-get install chromium): the live-widget test needs a real browser")
    root = tmp_path_factory.mktemp("lab")
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": [], "source": s}
                    for i, s in enumerate(NOTEBOOK_CELLS)],
          "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}}, "nbformat": 4, "nbformat_minor": 5}
    (root / "widgets.ipynb").write_text(json.dumps(nb))
    port, token = _free_port(), "leafnbtest"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "JUPYTER_RUNTIME_DIR": str(root / "runtime"), "JUPYTER_CONFIG_DIR": str(root / "config")}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}", "--ip=127.0.0.1",
           f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
           f"--LabApp.workspaces_dir={root / 'workspaces'}", "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(root / "lab.log", "w"), start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try: urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=1); break
            except OSError: time.sleep(0.5)
        else: pytest.fail("JupyterLab did not start:\n" + (root / "lab.log").read_text()[-3000:])
        yield url, token
    finally:
        os.killpg(proc.pid, 15); proc.wait(timeout=30)


def _flagged(page) -> int:
    "Tokens flagged in the detection widget's view, as it states them ('N of M tokens flagged')."
    text = page.locator(".leaf-threshold").first.inner_text()
    return int(re.search(r"(\d+) of \d+ tokens flagged", text)[1])


def test_widgets_in_a_live_kernel(lab):
    from playwright.sync_api import sync_playwright
    url, token = lab
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{url}/lab/tree/widgets.ipynb?token={token}")
        page.wait_for_function("window.jupyterapp && document.querySelector('.jp-NotebookPanel')", timeout=60_000)
        page.wait_for_function("(() => { const w = window.jupyterapp.shell.currentWidget;"
                               " return w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel"
                               " && w.sessionContext.session.kernel.status === 'idle'; })()", timeout=90_000)
        page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
        page.wait_for_selector(".leaf-threshold", timeout=180_000)    # the detection widget, rendered by the live kernel
        page.wait_for_selector(".leaf-attention img", timeout=180_000)  # the attention widget

        # τ: type a value into the slider's readout (what a reader does to set it exactly); the view re-renders
        before = _flagged(page)
        readout = page.locator(".widget-slider .widget-readout").first
        readout.click(); page.keyboard.press("Control+A"); page.keyboard.type("0.9"); page.keyboard.press("Enter")
        page.wait_for_function(f"!/\\b{before} of \\d+ tokens flagged/.test(document.querySelector('.leaf-threshold').innerText)", timeout=30_000)
        after = _flagged(page)
        assert after != before, (before, after)
        page.locator(".leaf-threshold").first.locator("xpath=ancestor::div[contains(@class,'widget-vbox')][1]").screenshot(
            path=str(ARTIFACTS / "detection_widget_after_slider.png"))

        # layer: pick another one in the attention widget; its heading and its figure change
        img = page.locator(".leaf-attention img").first.get_attribute("src")
        layer = page.locator(".widget-dropdown", has_text="layer").locator("select")
        layer.select_option(index=1)
        page.wait_for_function("/layer 1,/.test(document.querySelector('.leaf-attention').innerText)", timeout=60_000)
        assert page.locator(".leaf-attention img").first.get_attribute("src") != img
        browser.close()
    assert before != after and (ARTIFACTS / "detection_widget_after_slider.png").stat().st_size > 1000
