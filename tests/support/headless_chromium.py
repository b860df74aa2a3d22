"""A real headless Chromium (Debian's ``chromium``) driven over the DevTools protocol.

The protocol runs over a pipe (``--remote-debugging-pipe``: the browser reads commands on
fd 3 and writes answers and events on fd 4, each a JSON message ended by NUL), so no
websocket client is needed.  ``Chromium().open(url)`` loads a page and gathers what a test
asks about: the visible text, every JavaScript exception, console error and browser log
error (a failed resource load, a Content-Security-Policy refusal), and a full-page PNG."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WIDTH, HEIGHT = 1280, 900


class ChromiumMissing(RuntimeError):
    pass


def find_chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise ChromiumMissing("chromium is not installed: run .ci/setup (it runs apt-get install -y chromium)")
    return exe


@dataclass
class Page:
    browser: "Chromium"
    session: str
    url: str
    errors: list[str] = field(default_factory=list)

    def evaluate(self, expression: str) -> Any:
        res = self.browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                     "awaitPromise": True}, session=self.session)
        if "exceptionDetails" in res:
            raise AssertionError(f"{expression!r} threw: {res['exceptionDetails']}")
        return res["result"].get("value")

    def text(self) -> str:
        return self.evaluate("document.body.innerText")

    def screenshot(self, path: Path) -> Path:
        size = self.browser.send("Page.getLayoutMetrics", session=self.session)["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": max(WIDTH, size["width"]), "height": min(size["height"], 8000), "scale": 1}
        data = self.browser.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                            "clip": clip}, session=self.session)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def mouse(self, kind: str, x: float, y: float) -> None:
        """A real mouse event at page coordinates (``mouseMoved``, or a full click with ``click``)."""
        events = [("mousePressed", 1), ("mouseReleased", 1)] if kind == "click" else [(kind, 0)]
        for event, count in events:
            self.browser.send("Input.dispatchMouseEvent", {"type": event, "x": x, "y": y, "button": "left" if count
                                                           else "none", "clickCount": count}, session=self.session)

    def click_and_wait(self, x: float, y: float) -> None:
        """Click at (x, y) and wait for the page it opens to load."""
        self.browser._events.clear()
        self.mouse("click", x, y)
        self.browser.wait_for_load(self.session)
        self.settle()

    def settle(self, seconds: float = 0.3) -> None:
        """Let late events (errors thrown by deferred script) arrive."""
        self.browser.pump(seconds)

    def close(self) -> None:
        self.browser.send("Target.closeTarget", {"targetId": self.browser.targets.pop(self.session)})


class Chromium:
    def __init__(self, *, timeout: float = 30.0) -> None:
        exe = find_chromium()
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="lorareg-chromium-")
        self.targets: dict[str, str] = {}
        self._pages: dict[str, Page] = {}
        self._next_id = 0
        self._buffer = b""
        self._events: list[dict] = []
        cmd_r, self._cmd_w = os.pipe()
        self._out_r, out_w = os.pipe()
        child_in, child_out = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 10), fcntl.fcntl(out_w, fcntl.F_DUPFD, 10)

        def as_fd_3_and_4() -> None:  # in the child, before exec
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        args = [exe, "--headless", "--remote-debugging-pipe", "--no-first-run", "--no-default-browser-check",
                "--disable-gpu", "--disable-extensions", "--disable-background-networking", "--disable-sync",
                "--disable-component-update", "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
                f"--user-data-dir={self.profile}", f"--window-size={WIDTH},{HEIGHT}", "about:blank"]
        if os.geteuid() == 0:  # CI runs as root, where Chromium's sandbox cannot start
            args.insert(1, "--no-sandbox")
        self._log = open(Path(self.profile) / "stderr.log", "wb")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log,
                                     close_fds=False, preexec_fn=as_fd_3_and_4)
        for fd in (cmd_r, out_w, child_in, child_out):
            os.close(fd)

    # -- protocol --------------------------------------------------------------------------------
    def send(self, method: str, params: dict | None = None, *, session: str | None = None) -> dict:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            for m in self._read(deadline):
                if m.get("id") == self._next_id:
                    if "error" in m:
                        raise RuntimeError(f"{method}: {m['error']}")
                    return m.get("result", {})
                self._event(m)

    def _read(self, deadline: float) -> list[dict]:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"chromium did not answer in {self.timeout:.0f} s ({self.stderr_tail()})")
        ready, _, _ = select.select([self._out_r], [], [], min(left, 0.1))
        if not ready:
            return []
        chunk = os.read(self._out_r, 1 << 20)
        if not chunk:
            raise RuntimeError(f"chromium closed its pipe ({self.stderr_tail()})")
        self._buffer += chunk
        *messages, self._buffer = self._buffer.split(b"\0")
        return [json.loads(m) for m in messages if m]

    def _event(self, m: dict) -> None:
        page = self._pages.get(m.get("sessionId", ""))
        if page is None:
            return
        method, p = m.get("method"), m.get("params", {})
        if method == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            page.errors.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            page.errors.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
        elif method == "Log.entryAdded" and p["entry"].get("level") == "error":
            page.errors.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}".strip())
        elif method == "Page.loadEventFired":
            self._events.append(m)

    def pump(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for m in self._read(time.monotonic() + self.timeout):
                self._event(m)

    # -- pages -----------------------------------------------------------------------------------
    def open(self, url: str) -> Page:
        """A new tab at ``url``, loaded (the load event fired, deferred scripts ran)."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.targets[session] = target
        page = self._pages[session] = Page(self, session, url)
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=session)
        self.send("Emulation.setDeviceMetricsOverride", {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1,
                                                         "mobile": False}, session=session)
        self._events.clear()
        nav = self.send("Page.navigate", {"url": url}, session=session)
        if nav.get("errorText"):
            raise RuntimeError(f"cannot load {url}: {nav['errorText']}")
        self.wait_for_load(session)
        page.settle()
        return page

    def wait_for_load(self, session: str) -> None:
        deadline = time.monotonic() + self.timeout
        while not any(e.get("sessionId") == session for e in self._events):
            for m in self._read(deadline):
                self._event(m)

    def stderr_tail(self) -> str:
        self._log.flush()
        return (Path(self.profile) / "stderr.log").read_text(errors="replace")[-600:]

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.send("Browser.close")
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._cmd_w, self._out_r):
            try:
                os.close(fd)
            except OSError:
                pass
        self._log.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
