"""A real headless Chromium for page tests, driven through the DevTools protocol over a pipe
(--remote-debugging-pipe: commands on the browser's fd 3, replies on its fd 4, each JSON message ended by NUL),
so no driver package and no network port is needed. Debian's package is `chromium`."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    return next((p for p in (shutil.which(c) for c in CANDIDATES) if p), None)


@dataclass
class PageResult:
    images: list[dict[str, Any]]  # src, complete, naturalWidth for every <img>
    errors: list[str]  # console errors, uncaught exceptions, failed loads
    title: str
    text: str
    svg_count: int
    screenshot: Path | None = None
    events: list[dict[str, Any]] = field(default_factory=list)


class Browser:
    def __init__(self, exe: str, profile: Path) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def fds() -> None:  # in the child: the protocol's fds 3 (commands in) and 4 (replies out)
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        args = [exe, "--headless=new", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--no-default-browser-check", "--disable-dev-shm-usage", "--disable-extensions", "--mute-audio",
                f"--user-data-dir={profile}", "about:blank"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     preexec_fn=fds, close_fds=False)  # fds 3 and 4 must survive into chromium
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []

    def _read_message(self, deadline: float) -> dict[str, Any]:
        import select

        while b"\0" not in self._buf:
            left = deadline - time.time()
            if left <= 0:
                raise TimeoutError("no reply from chromium")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed the pipe: " + (self.proc.stderr.read().decode()[-2000:]
                                                                       if self.proc.stderr else ""))
                self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 60) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            m = self._read_message(deadline)
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_event(self, method: str, timeout: float = 60) -> dict[str, Any]:
        for i, e in enumerate(self.events):
            if e.get("method") == method:
                return self.events.pop(i)
        deadline = time.time() + timeout
        while True:
            m = self._read_message(deadline)
            if m.get("method") == method:
                return m
            self.events.append(m)

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except Exception:  # already gone
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass


IMAGES_JS = ("JSON.stringify(Array.from(document.images).map(i => ({src: i.getAttribute('src').slice(0, 120), "
             "complete: i.complete, naturalWidth: i.naturalWidth})))")


def open_page(html: Path, screenshot: Path, profile: Path, width: int = 1300) -> PageResult:
    """Load `html` (a file), wait for it, and report its images, errors and a full-page screenshot."""
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("no chromium")
    b = Browser(exe, profile)
    try:
        target = b.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        s = b.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            b.send(f"{domain}.enable", session=s)
        b.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": 900, "deviceScaleFactor": 1,
                                                      "mobile": False}, session=s)
        b.send("Page.navigate", {"url": html.resolve().as_uri()}, session=s)
        b.wait_event("Page.loadEventFired", timeout=60)
        time.sleep(0.3)  # late console messages
        images = json.loads(b.send("Runtime.evaluate", {"expression": IMAGES_JS, "returnByValue": True},
                                   session=s)["result"]["value"])
        title = b.send("Runtime.evaluate", {"expression": "document.title", "returnByValue": True}, session=s)["result"]["value"]
        text = b.send("Runtime.evaluate", {"expression": "document.body.innerText", "returnByValue": True},
                      session=s)["result"]["value"]
        svgs = b.send("Runtime.evaluate", {"expression": "document.querySelectorAll('svg').length", "returnByValue": True},
                      session=s)["result"]["value"]
        metrics = b.send("Page.getLayoutMetrics", session=s)
        height = int(min(16000, metrics.get("cssContentSize", metrics.get("contentSize", {})).get("height", 900)))
        b.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                      "mobile": False}, session=s)
        shot = b.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=s)
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        errors = []
        for e in b.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                errors.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
            elif m == "Runtime.exceptionThrown":
                errors.append("exception: " + json.dumps(p.get("exceptionDetails", {}))[:500])
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                errors.append("log: " + p["entry"].get("text", "") + " " + p["entry"].get("url", ""))
            elif m == "Network.loadingFailed":
                errors.append(f"load failed: {p.get('errorText')} ({p.get('type')})")
        return PageResult(images, errors, title, text, int(svgs), screenshot, b.events)
    finally:
        b.close()
