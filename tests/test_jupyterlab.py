"""The widgets in a real JupyterLab: a server on localhost, headless Chromium running two course notebooks.

Setting a widget's Python value (tests/test_widgets.py) proves the kernel side; only a browser proves that
the front-end a student sees renders, and answers the mouse. JupyterLab and jupyterlab_widgets are the
versions `make lab` installs (constraints.txt pins them for both).
"""

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .conftest import launch

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["00_quickstart.ipynb", "04_unet_cross_attention.ipynb"]
RUN_LIMIT_S = 300  # one notebook, all cells, on a 2-core CPU (each takes under a minute alone)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab serving copies of the notebooks (autosave must not touch the course) from a temporary folder,
    with its settings, workspaces and runtime files there too; shut down afterwards."""
    root = tmp_path_factory.mktemp("lab")
    for name in NOTEBOOKS:
        shutil.copy(ROOT / "notebooks" / name, root / name)
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(root / ".config"), "JUPYTER_RUNTIME_DIR": str(root / ".runtime")}
    jupyter = Path(sys.executable).with_name("jupyter")
    command = [str(jupyter), "lab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={root}", f"--LabServerApp.user_settings_dir={root / '.settings'}",
               f"--LabServerApp.workspaces_dir={root / '.workspaces'}",
               "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: the test runs JupyterLab's own commands
               "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]  # nothing from the internet
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")  # CI containers run as root; JupyterLab refuses that unless told
    log = (root / "server.log").open("w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start:\n{(root / 'server.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield {"url": url, "token": token, "log": root / "server.log"}
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_widgets_render_and_answer_in_jupyterlab(lab, chromium, name, tmp_path):
    from playwright.sync_api import sync_playwright

    errors, outside = [], []
    with sync_playwright() as p:
        browser = launch(p, chromium)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("pageerror", lambda err: errors.append(str(err)))

        def local_only(route):  # JupyterLab is served from localhost; anything else would need the internet
            if route.request.url.startswith(lab["url"]):
                return route.continue_()
            outside.append(route.request.url)
            return route.abort()

        page.route("**/*", local_only)
        # A workspace of its own, reset: only this notebook opens (not the tabs an earlier test left open).
        page.goto(f"{lab['url']}/lab/workspaces/{Path(name).stem}/tree/{name}?reset&token={lab['token']}")
        notebook = "window.jupyterapp.shell.currentWidget"
        # The notebook names its kernel (metadata.kernelspec), so it starts without asking.
        page.wait_for_function(f"window.jupyterapp && {notebook}?.context?.path === '{name}' "
                               f"&& {notebook}.sessionContext?.session?.kernel?.status === 'idle'", timeout=120_000)
        page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
        # Done when every code cell has an execution count and the kernel is idle again; an error stops the run.
        kernel_errors = "document.querySelectorAll(\"[data-mime-type='application/vnd.jupyter.error']\").length"
        page.wait_for_function(
            f"""(() => {{ const cells = {notebook}.content.widgets.filter(c => c.model.type === 'code');
                 return {kernel_errors} > 0 || ({notebook}.sessionContext.session.kernel.status === 'idle'
                   && cells.every(c => c.model.executionCount !== null)); }})()""",
            timeout=RUN_LIMIT_S * 1000, polling=1000)
        page.screenshot(path=str(tmp_path / "ran.png"))
        # The kernel raised nothing.
        assert page.locator("[data-mime-type='application/vnd.jupyter.error']").all_inner_texts() == []

        # The TraceExplorer's front-end is in the page: its slider, its dropdowns and its four pictures, loaded.
        explorer = page.locator(".jupyter-widgets.widget-vbox").filter(has=page.locator(".widget-slider")).last
        explorer.scroll_into_view_if_needed()
        assert explorer.locator(".widget-slider").count() == 1
        assert explorer.locator(".widget-dropdown select").count() == 3  # token, layer, head
        pictures = explorer.locator("img")
        assert pictures.count() == 4
        assert all(w > 0 for w in pictures.evaluate_all("imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)"))

        # Moving the step slider (its handle, with the keyboard, as a student can) changes the latent's picture.
        latent = pictures.nth(1)
        before = latent.get_attribute("src")
        explorer.locator(".widget-slider .noUi-handle").focus()
        page.keyboard.press("Home")
        page.wait_for_function("([img, before]) => img.src !== before", arg=[latent.element_handle(), before], timeout=30_000)
        assert explorer.locator(".widget-readout").first.inner_text().strip() == "0"
        explorer.get_by_text("step 0 of steps").wait_for(timeout=30_000)  # the caption follows (the views arrive one by one)
        explorer.screenshot(path=str(tmp_path / "explorer-step-0.png"))
        browser.close()
    assert errors == [] and outside == []
