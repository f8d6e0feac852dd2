"""A real headless Chromium, driven over the Chrome DevTools Protocol, for tests of the Prefect UI.

Debian's `chromium` package is the browser (`.ci/run` and the `chromium` fixture of
tests/test_ui.py install it where it is missing). The protocol is spoken over a WebSocket with
the `websockets` package, which Prefect already depends on, so no browser driver and no browser
download are needed. `PrefectServer` starts a real `prefect server` (UI included) on a free
loopback port for the browser to look at.

    with PrefectServer(home) as server, Chromium() as browser:
        page = browser.new_page(width=1440, height=900)
        page.goto(f"{server.url}/runs")
        page.wait_for("document.querySelector('h1') !== null")
        page.screenshot(Path("runs.png"))
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class BrowserError(AssertionError):
    """What the page did not do; an AssertionError so pytest shows it as a test failure."""


class Page:
    """One tab: navigate, evaluate JavaScript, wait for a condition, take a screenshot."""

    def __init__(self, socket: ClientConnection, target_id: str):
        self._socket = socket
        self.target_id = target_id
        self._ids = itertools.count(1)

    def send(self, method: str, params: dict[str, Any] | None = None, timeout: float = 30) -> Any:
        message_id = next(self._ids)
        self._socket.send(json.dumps({"id": message_id, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"no answer to {method} within {timeout}s")
            reply = json.loads(self._socket.recv(timeout=left))
            if reply.get("id") != message_id:
                continue  # an event
            if "error" in reply:
                raise BrowserError(f"{method}: {reply['error']}")
            return reply.get("result", {})

    def set_viewport(self, width: int, height: int) -> None:
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )

    def goto(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})

    def evaluate(self, expression: str, timeout: float = 30) -> Any:
        """The value of a JavaScript expression (promises are awaited)."""
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            timeout=timeout,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"JavaScript error in {expression[:80]!r}: {text}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 30, what: str | None = None) -> Any:
        """Poll a JavaScript expression until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.evaluate(expression)
            except BrowserError as error:
                last = error
            else:
                if last:
                    return last
            time.sleep(0.25)
        raise BrowserError(f"timed out after {timeout}s waiting for {what or expression}: {last}")

    def click_text(self, selector: str, text: str) -> None:
        """Click the first element matching `selector` whose text contains `text`."""
        clicked = self.evaluate(
            f"""(() => {{
                const wanted = {json.dumps(text)};
                const found = [...document.querySelectorAll({json.dumps(selector)})]
                    .find(e => e.textContent.includes(wanted));
                if (!found) return false;
                found.scrollIntoView(); found.click(); return true;
            }})()"""
        )
        if not clicked:
            raise BrowserError(f"no {selector} with text {text!r} to click")

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
        data = self.send("Page.captureScreenshot", params, timeout=60)["data"]
        path.write_bytes(base64.b64decode(data))
        return path


class Chromium:
    """A headless Chromium process with its own profile; stopped on exit, also on failure."""

    def __init__(self, executable: str | None = None):
        found = executable or chromium_path()
        if found is None:
            raise RuntimeError("Chromium is not installed: apt-get install -y chromium")
        self.executable = found
        self._profile = Path(tempfile.mkdtemp(prefix="evolink-chromium-"))
        self._process: subprocess.Popen[bytes] | None = None
        self._sockets: list[ClientConnection] = []
        self.port = 0

    def __enter__(self) -> Chromium:
        self._process = subprocess.Popen(
            [self.executable, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        active = self._profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (active.exists() and active.read_text().strip()):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError("Chromium did not start its DevTools endpoint")
            time.sleep(0.1)
        self.port = int(active.read_text().split()[0])
        return self

    def new_page(self, width: int = 1440, height: int = 900) -> Page:
        target = httpx.put(f"http://127.0.0.1:{self.port}/json/new?about:blank", timeout=10)
        target.raise_for_status()
        info = target.json()
        socket = connect(info["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
        self._sockets.append(socket)
        page = Page(socket, info["id"])
        page.send("Page.enable")
        page.send("Runtime.enable")
        page.set_viewport(width, height)
        return page

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for connection in self._sockets:
            connection.close()
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
        shutil.rmtree(self._profile, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrefectServer:
    """`prefect server start` with its UI on a free loopback port, in its own process group.

    The UI calls the API it is told about (`PREFECT_UI_API_URL`), not the port it is served on,
    so both are set. Stopped on exit (SIGTERM, then the whole group is killed), also on failure;
    its output goes to `log`.
    """

    def __init__(self, home: Path, log: Path, startup_timeout: float = 90):
        self.home = home
        self.log = log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_url = f"{self.url}/api"
        self._timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PrefectServer:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            PREFECT_HOME=str(self.home),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_SERVER_API_PORT=str(self.port),
            PREFECT_UI_API_URL=self.api_url,
            PREFECT_UI_ENABLED="true",
        )
        with self.log.open("wb") as sink:
            self._process = subprocess.Popen(
                [
                    sys.executable,
                    *("-m", "prefect", "server", "start"),
                    *("--host", "127.0.0.1", "--port", str(self.port)),
                ],
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + self._timeout
        while True:
            if self._process.poll() is not None:
                self.__exit__(None, None, None)
                raise RuntimeError(f"prefect server exited:\n{self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    return self
            if time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError(
                    f"prefect server not healthy in {self._timeout}s:\n{self.tail()}"
                )
            time.sleep(0.25)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # the server's own children too
        if process.poll() is None:
            process.wait(timeout=10)
