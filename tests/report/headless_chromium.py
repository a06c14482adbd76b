"""Headless Chromium driven through the DevTools protocol, with the standard library alone
(a tiny WebSocket client): open a page, read console errors, exceptions, dialogs and network
requests, evaluate JavaScript in it, take a screenshot.

    with Browser.start() as browser:
        page = browser.open("file:///.../report.html")
        page.evaluate("document.title"); page.screenshot(); page.errors; page.dialogs
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")
TIMEOUT_S = 60


def find_chromium() -> str | None:
    return next((path for path in map(shutil.which, NAMES) if path), None)


class _Socket:
    """A WebSocket client connection: text frames out (masked, as a client must), frames in."""

    def __init__(self, url: str):
        parts = urlparse(url)
        self.connection = socket.create_connection((parts.hostname, parts.port), TIMEOUT_S)
        key = base64.b64encode(os.urandom(16)).decode()
        self.connection.sendall((f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                                 f"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                                .encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.connection.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def _read(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = self.connection.recv(count - len(data))
            if not chunk:
                raise ConnectionError("DevTools closed the connection")
            data += chunk
        return data

    def send(self, text: str) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        size = len(payload)
        header = bytes([0x81]) + (bytes([0x80 | size]) if size < 126 else
                                  bytes([0x80 | 126]) + struct.pack(">H", size) if size < 65536
                                  else bytes([0x80 | 127]) + struct.pack(">Q", size))
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.connection.sendall(header + mask + masked)

    def receive(self) -> str:
        message = b""
        while True:
            first, second = self._read(2)
            size = second & 0x7F
            if size == 126:
                size = struct.unpack(">H", self._read(2))[0]
            elif size == 127:
                size = struct.unpack(">Q", self._read(8))[0]
            payload = self._read(size)  # a server's frames are not masked
            opcode = first & 0x0F
            if opcode == 8:
                raise ConnectionError("DevTools closed the connection")
            if opcode in (9, 10):  # ping, pong
                continue
            message += payload
            if first & 0x80:
                return message.decode()

    def close(self) -> None:
        self.connection.close()


class Page:
    """One tab: commands answered in order, events recorded as they come."""

    def __init__(self, url: str):
        self.socket = _Socket(url)
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, **params) -> dict:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.receive())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self._event(message)

    def _event(self, message: dict) -> None:
        self.events.append(message)
        if message.get("method") == "Page.javascriptDialogOpening":  # let the page go on
            self.socket.send(json.dumps({"id": 0, "method": "Page.handleJavaScriptDialog",
                                         "params": {"accept": True}}))

    def wait_for(self, method: str, timeout: float = TIMEOUT_S) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in self.events if e.get("method") == method]
            if found:
                return found[-1]
            self._event(json.loads(self.socket.receive()))
        raise TimeoutError(f"no {method} within {timeout} s")

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def settle(self, seconds: float = 0.5) -> None:
        """Let late events (a dialog a script opens after load, console output) arrive."""
        self.evaluate(f"new Promise(r => setTimeout(r, {int(seconds * 1000)}))")

    def of(self, method: str) -> list[dict]:
        return [e["params"] for e in self.events if e.get("method") == method]

    @property
    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries (a failed load too)."""
        console = [" ".join(str(a.get("value", a.get("description", ""))) for a in e["args"])
                   for e in self.of("Runtime.consoleAPICalled") if e["type"] in ("error", "assert")]
        thrown = [e["exceptionDetails"].get("text", "") + " " +
                  str(e["exceptionDetails"].get("exception", {}).get("description", ""))
                  for e in self.of("Runtime.exceptionThrown")]
        logged = [e["entry"]["text"] for e in self.of("Log.entryAdded")
                  if e["entry"]["level"] == "error"]
        return console + thrown + logged

    @property
    def dialogs(self) -> list[str]:
        return [e["message"] for e in self.of("Page.javascriptDialogOpening")]

    @property
    def requests(self) -> list[str]:
        return [e["request"]["url"] for e in self.of("Network.requestWillBeSent")]


class Browser:
    def __init__(self, process: subprocess.Popen, port: int, profile: tempfile.TemporaryDirectory):
        self.process, self.port, self.profile = process, port, profile

    @classmethod
    def start(cls, width: int = 1200, height: int = 1600) -> "Browser":
        executable = find_chromium()
        if executable is None:
            raise FileNotFoundError("no Chromium found (" + ", ".join(NAMES) + ")")
        profile = tempfile.TemporaryDirectory()
        process = subprocess.Popen(
            [executable, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
             "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars",
             "--remote-debugging-port=0", f"--user-data-dir={profile.name}",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        active = Path(profile.name) / "DevToolsActivePort"  # Chromium writes its port here
        deadline = time.monotonic() + TIMEOUT_S
        while not (active.is_file() and active.read_text().strip()):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"Chromium did not start ({executable})")
            time.sleep(0.1)
        return cls(process, int(active.read_text().split()[0]), profile)

    def open(self, url: str) -> Page:
        """A page with console, log, network and dialog events recorded, loaded from `url`."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list",
                                    timeout=TIMEOUT_S) as answer:
            target = next(t for t in json.load(answer) if t["type"] == "page")
        page = Page(target["webSocketDebuggerUrl"])
        for domain in ("Page", "Runtime", "Log", "Network"):
            page.send(f"{domain}.enable")
        page.events.clear()  # about:blank's
        page.send("Page.navigate", url=url)
        page.wait_for("Page.loadEventFired")
        return page

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.profile.cleanup()
