"""``lorareg ui`` in a real headless Chromium: the command serves a registry on a free
127.0.0.1 port, and the browser loads the overview, a version page, the lineage graph of a
three-step chain (merge -> rollback -> rollback) and a diff page, checks what a person sees,
that no JavaScript error, failed resource or Content-Security-Policy refusal was logged, and
saves screenshots under the test's temporary folder.  Without chromium these tests fail."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.headless_chromium import Chromium, ChromiumMissing
from tests.support.web_registry import XSS


@pytest.fixture(scope="module")
def browser():
    try:
        chromium = Chromium()
    except ChromiumMissing as exc:
        pytest.fail(str(exc))  # never a skip: CI installs it in .ci/setup
    yield chromium
    chromium.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, llama, llama_lora, llama_lora2):
    """``lorareg ui --port 0`` on a registry of its own, as a user starts it; stopped afterwards."""
    from tests.support.web_registry import build

    root = tmp_path_factory.mktemp("ui")
    build(root / "home", llama=llama, lora1=llama_lora, lora2=llama_lora2, work=root)
    env = {k: v for k, v in os.environ.items() if k not in ("LORAREG_DATABASE_URL", "LORAREG_HOME")}
    log = root / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "lorareg.cli.main", "--home", str(root / "home"), "ui",
                                 "--port", "0"], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline, url = time.monotonic() + 60, None
        while url is None:
            found = re.search(r"at (http://127\.0\.0\.1:\d+/)", log.read_text())
            url = found.group(1) if found else None
            assert proc.poll() is None, f"lorareg ui exited: {log.read_text()}"
            assert time.monotonic() < deadline, f"lorareg ui did not start: {log.read_text()}"
            time.sleep(0.1)
        with urllib.request.urlopen(url + "static/app.js", timeout=10) as r:
            assert r.status == 200
        yield url.rstrip("/")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode in (0, -15), log.read_text()


def check_page(page, shots: Path, name: str) -> str:
    """No JavaScript error logged, no injected script ran; a screenshot saved; the visible text."""
    assert page.errors == [], page.errors
    assert page.evaluate("window.__pwned === undefined"), "a registry value ran as script"
    path = page.screenshot(shots / f"{name}.png")
    png = path.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") >= 1280 and len(png) > 20_000
    return page.text()


def test_overview(browser, server, tmp_path):
    page = browser.open(server + "/")
    text = check_page(page, tmp_path, "overview")
    assert "Registry" in text and "Recent events" in text and "asst@prod" in text
    counts = {what: n for n, what in re.findall(r"(\d+)\n(bases|adapters|merges|versions in all)", text)}
    assert counts == {"bases": "1", "adapters": "4", "merges": "5", "versions in all": "10"}, text[:400]
    assert XSS.split('"')[0] in text  # the hostile message is shown as text
    page.close()


def test_version_page(browser, server, tmp_path):
    page = browser.open(server + "/v/asst@3")
    text = check_page(page, tmp_path, "version-asst3")
    for needle in ("asst@3", "Made by subtracting math@1 (weight 0.7) from the merged weights of asst@2",
                   "Files", "Reproduce", "lorareg rebuild asst@3", "History of asst", "Checks"):
        assert needle in text, needle
    assert page.evaluate("document.querySelectorAll('table.files tbody tr').length") >= 4
    assert XSS.split('"')[0] in text  # the tag value, as text
    page.close()
    page = browser.open(server + "/v/chat")
    text = check_page(page, tmp_path, "version-chat")
    assert "loss" in text and "eval_acc" in text and "trained on" in text
    assert page.evaluate("document.querySelectorAll('figure.chart svg circle').length") == 40
    page.close()


def test_lineage_graph_of_a_three_step_chain(browser, server, tmp_path):
    page = browser.open(server + "/lineage/asst@2")
    check_page(page, tmp_path, "lineage-asst2")
    graph = page.evaluate("document.querySelector('svg.lineage').textContent")
    assert "rollback: −code@1 (rebuilt)" in graph and "rollback: −math@1 (subtracted)" in graph
    boxes = page.evaluate("""Array.from(document.querySelectorAll('svg.lineage .node')).map(a => {
        const r = a.querySelector('rect').getBoundingClientRect();
        return [a.dataset.ref, r.left, r.top, r.right, r.bottom]; })""")
    at = {ref: box for ref, *box in boxes}
    assert set(at) == {"llama@1", "chat@1", "code@1", "math@1", "asst@1", "asst@2", "asst@3"}  # not tied@1
    assert at["llama@1"][3] < at["chat@1"][1] and at["chat@1"][3] < at["asst@1"][1]
    assert at["asst@1"][3] < at["asst@2"][1] < at["asst@2"][3] < at["asst@3"][1]  # the chain, top to bottom
    items = list(at.items())
    for i, (a, ba) in enumerate(items):
        for b, bb in items[i + 1:]:
            assert ba[2] <= bb[0] or bb[2] <= ba[0] or ba[3] <= bb[1] or bb[3] <= ba[1], (a, b)
    labels = page.evaluate("""Array.from(document.querySelectorAll('svg.lineage .edge-label')).map(t => {
        const r = t.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; })""")
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], ("labels overlap", a, b)
    # hovering a version lights its links (app.js ran), clicking it opens its page
    x, y = (at["asst@1"][0] + at["asst@1"][2]) / 2, (at["asst@1"][1] + at["asst@1"][3]) / 2
    page.mouse("mouseMoved", x, y)
    lit = page.evaluate("Array.from(document.querySelectorAll('svg.lineage .edge.lit'))"
                        ".map(e => e.dataset.src + '>' + e.dataset.dst)")
    assert set(lit) == {"asst@1>llama@1", "asst@1>chat@1", "asst@1>code@1", "asst@1>math@1", "asst@2>asst@1"}
    page.click_and_wait(x, y)
    assert page.evaluate("decodeURIComponent(location.pathname)") == "/v/asst@1"
    assert "3 adapters merged into llama@1 with linear" in page.text() and page.errors == []
    page.close()


def test_diff_page(browser, server, tmp_path):
    page = browser.open(server + "/diff?a=asst@1&b=asst@3")
    text = check_page(page, tmp_path, "diff")
    assert "asst@1 and asst@3: different models" in text and "Side by side" in text and "tensors differ" in text
    differing = page.evaluate("Array.from(document.querySelectorAll('table.side tr.differs th'))"
                              ".map(t => t.textContent)")
    assert {"digest", "adapters", "subtracted", "message"} <= set(differing)
    assert "method" not in differing and "seed" not in differing
    assert page.evaluate("document.querySelectorAll('table.tensors tbody tr').length") >= 1
    page.close()
