"""A headless Chromium driven through the Chrome DevTools protocol over a pipe (no extra package): open a
page, run JavaScript in it, collect its console errors, take a screenshot. Shared by the browser tests."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")


def chromium() -> str | None:
    """The Chromium executable, None when absent."""
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser")) if p), None)


class Browser:
    """One headless Chromium with one page; ``errors`` collects console errors, exceptions and failed loads."""

    def __init__(self, profile: Path, width: int = 1280, height: int = 900) -> None:
        to_chrome, self._write = os.pipe()
        self._read, from_chrome = os.pipe()
        # Chromium reads commands on fd 3 and writes replies on fd 4: bash puts the pipe ends there (moved
        # above 10 first, so that neither is already 3 or 4) and becomes Chromium (no preexec_fn in a threaded
        # process)
        ends = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_chrome, from_chrome)]
        command = [chromium(), *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe",
                   f"--window-size={width},{height}", "about:blank"]
        shell = f'exec "$0" "$@" 3<&{ends[0]} 4>&{ends[1]} {ends[0]}<&- {ends[1]}>&-'
        self.process = subprocess.Popen([shutil.which("bash") or "/bin/bash", "-c", shell, *command], pass_fds=ends,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for fd in (to_chrome, from_chrome, *ends):
            os.close(fd)
        self._id, self._replies, self.events, self.errors = 0, {}, queue.Queue(), []
        threading.Thread(target=self._listen, daemon=True).start()
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                         "mobile": False}, session=True)

    def _listen(self) -> None:
        buffer = b""
        while chunk := os.read(self._read, 1 << 16):
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "id" in message:
                    self._replies[message["id"]] = message
                else:
                    self._event(message)

    def _event(self, message: dict) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.exceptionThrown":
            self.errors.append(params["exceptionDetails"].get("text", "exception"))
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.errors.append(" ".join(str(a.get("value", a.get("description"))) for a in params.get("args", [])))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            self.errors.append(f"{params['entry'].get('text')} {params['entry'].get('url', '')}")
        self.events.put(message)

    def call(self, method: str, params: dict | None = None, session: bool = False, timeout: float = 60) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while self._id not in self._replies:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise TimeoutError(f"Chromium did not answer {method}")
            time.sleep(0.01)
        reply = self._replies.pop(self._id)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def open(self, url: str, timeout: float = 60) -> None:
        """Navigate and wait for the load event."""
        while not self.events.empty():
            self.events.get_nowait()
        self.call("Page.navigate", {"url": url}, session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.events.get(timeout=0.5).get("method") == "Page.loadEventFired":
                    return
            except queue.Empty:
                continue
        raise TimeoutError(f"{url} did not load")

    def js(self, expression: str) -> Any:
        """Evaluate ``expression`` in the page (promises awaited); its JSON value."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, session=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JavaScript error: {result['exceptionDetails']}")
        return result["result"].get("value")

    def click(self, selector: str) -> None:
        """A real mouse click (pressed and released) at the middle of the first element matching ``selector``."""
        box = self.js(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.scrollIntoView("
                      "{block: 'center'}); const r = e.getBoundingClientRect(); return [r.x + r.width / 2, "
                      "r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", {"type": kind, "x": box[0], "y": box[1], "button": "left",
                                                   "clickCount": 1}, session=True)

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        params = {"format": "png", "captureBeyondViewport": full_page}
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", params, session=True)["data"]))
        return path

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (TimeoutError, RuntimeError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        os.close(self._write)
        os.close(self._read)


if __name__ == "__main__":  # python tests/browser.py OUT_DIR/report.html docs/images/report.png
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as profile:
        browser = Browser(Path(profile), 1280, 1000)
        try:
            browser.open(Path(sys.argv[1]).resolve().as_uri())
            browser.js("new Promise(r => setTimeout(r, 500))")
            print(browser.screenshot(Path(sys.argv[2])), browser.errors or "no console error")
        finally:
            browser.close()
