"""A real browser: JupyterLab on a loopback port with a token, Debian's Chromium driven by
Playwright, notebook 02 in the smoke profile run from the Run menu, its prediction browser
found, one control changed ("show: correct"), and its output seen to change. Screenshots go to
outputs/browser/ (before and after the change)."""
from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = REPO / "outputs" / "browser"

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - requirements.txt installs it
    sync_playwright = None

pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).is_file(),
                       reason="no Chromium at /usr/bin/chromium: `apt-get install chromium` (.ci/run does) to run the "
                              "browser test"),
    pytest.mark.skipif(sync_playwright is None, reason="the playwright package is not installed"),
]
# Chromium as root in a container, on a machine without network: no sandbox, no background fetches
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def smoke_copy(folder: Path, data_root: Path, outputs_root: Path) -> Path:
    """Notebook 02 with the smoke profile and one dataset injected (as papermill would),
    `interactive` left True as JupyterLab users have it."""
    nb = nbformat.read(REPO / "notebooks" / "02_zero_shot.ipynb", as_version=4)
    params = {"profile": "smoke", "datasets": ["synth_ortho12"], "splits": ["test"], "data_root": str(data_root),
              "outputs_root": str(outputs_root)}
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in params.items()),
                                                      metadata={"tags": ["injected-parameters"]}))
    path = folder / "02_zero_shot.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.fixture
def lab(tmp_path, smoke_data):
    from medkit.backbones import build_offline
    from medkit.workbook import ensure_kernel

    ensure_kernel()
    build_offline(["miniclip-smoke"], smoke_data, progress=False)  # outside the browser's wait
    root = tmp_path / "lab"
    root.mkdir()
    smoke_copy(root, smoke_data, tmp_path / "outputs")
    port, token = free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    settings = tmp_path / "lab-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')  # no news toast
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", JUPYTER_CONFIG_DIR=str(tmp_path / "jupyter-config"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "jupyter-runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "lab-settings"), JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "ws"))
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
                             f"--ServerApp.port={port}", f"--IdentityProvider.token={token}",
                             f"--ServerApp.root_dir={root}", "--LabApp.news_url=None",
                             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                             "--LabApp.extension_manager=readonly",  # no PyPI look-ups
                             *(["--allow-root"] if os.geteuid() == 0 else [])],  # CI containers run as root
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"JupyterLab exited: {(tmp_path / 'lab.log').read_text()[-2000:]}")
                time.sleep(0.5)
        else:
            pytest.fail(f"JupyterLab did not answer on {base}: {(tmp_path / 'lab.log').read_text()[-2000:]}")
        yield base, token, tmp_path / "lab.log"
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_an_explorer_in_jupyterlab_reacts_to_its_control(lab):
    base, token, log = lab
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 2200})
        try:
            page.goto(f"{base}/lab/tree/02_zero_shot.ipynb?token={token}")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
            page.wait_for_selector("#jp-main-statusbar >> text=/medkit/", timeout=60_000)  # the medkit kernel
            page.click(".lm-MenuBar-itemLabel:text-is('Run')")
            page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")
            explorer = page.wait_for_selector(".medkit-explorer", timeout=240_000)
            status = explorer.wait_for_selector("text=/\\d+ of \\d+ test images match/", timeout=60_000)
            found = re.search(r"(\d+) of (\d+) test images match", status.inner_text())
            before = found.group(0)
            n, total = map(int, found.groups())
            assert n == total  # "all" to start with
            explorer.scroll_into_view_if_needed()
            page.wait_for_timeout(1000)
            explorer.screenshot(path=str(SHOTS / "explorer_before.png"))
            page.screenshot(path=str(SHOTS / "lab_before.png"))
            explorer.query_selector(".widget-toggle-button:text-is('correct')").click()  # a few images only
            page.wait_for_function("""(before) => {  // the new count, and its figures drawn
                const e = document.querySelector('.medkit-explorer');
                const t = e.innerText.match(/\\d+ of \\d+ test images match/);
                const imgs = [...e.querySelectorAll('img')];
                return t && t[0] !== before && imgs.length >= 2 && imgs.every(i => i.complete && i.naturalWidth > 0);
            }""", arg=before, timeout=60_000)
            explorer.scroll_into_view_if_needed()
            page.evaluate("() => Promise.all([...document.querySelectorAll('.medkit-explorer img')].map(i => i.decode()))")
            page.wait_for_timeout(1500)  # let the notebook paint the cells it windows in
            after = re.search(r"\d+ of \d+ test images match", explorer.inner_text()).group(0)
            explorer.screenshot(path=str(SHOTS / "explorer_after.png"))
            page.screenshot(path=str(SHOTS / "lab_after.png"))
        except Exception:
            page.screenshot(path=str(SHOTS / "lab_failure.png"))
            print(log.read_text()[-3000:])
            raise
        finally:
            browser.close()
    m, total_after = map(int, re.search(r"(\d+) of (\d+) test images", after).groups())
    assert total_after == total and m < total, (before, after)
    for name in ("explorer_before", "explorer_after"):
        assert (SHOTS / f"{name}.png").stat().st_size > 10_000
