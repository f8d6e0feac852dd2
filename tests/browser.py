"""A real headless Chromium, driven by Playwright, for tests of the Prefect UI.

Debian's `chromium` package is the browser (the `chromium_executable` fixture of
tests/test_ui.py installs it with apt-get where it is missing and it can). Playwright's Python
package (a test dependency) brings its driver, not a browser: `launch(executable_path=...)`
starts Debian's Chromium, so none of Playwright's own browsers is used or downloaded, and
`playwright install` is never run. `PrefectServer` starts a real `prefect server` (UI included)
on a free loopback port for the browser to look at.

    with PrefectServer(home, log) as server, Chromium() as browser:
        page = browser.new_page(width=1440, height=900)
        page.goto(f"{server.url}/runs")
        page.wait_for("document.querySelector('h1') !== null")
        page.click("button", text="Resume")  # a real click: mouse events, as a person's
        page.screenshot(Path("runs.png"))

The sync API runs Playwright's event loop in the calling thread and marks it as that thread's
running loop while a browser is open: from that thread, call Prefect's sync-compatible
functions (and `asyncio.run`) in another thread.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Playwright
    from playwright.sync_api import Page as PlaywrightPage

CHROMIUM_ARGS = ("--disable-gpu", "--disable-quic")
"""Added to Playwright's own (`--headless`, `--no-sandbox`, `--hide-scrollbars`, no background
networking, component updates or sync, no /dev/shm...)."""

MARKER = "--evolink-test-browser"
"""A switch Chromium ignores, carried by the browser process: how `Chromium` finds its own
processes when Playwright could not close them (never anyone else's Chromium)."""


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class BrowserError(AssertionError):
    """What the page did not do; an AssertionError so pytest shows it as a test failure."""


class BrowserUnavailable(RuntimeError):
    """Playwright is missing, or its driver could not start this Chromium."""


def _first_line(error: BaseException) -> str:
    text = str(getattr(error, "message", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _launch_failure(error: BaseException) -> str:
    """Playwright's reason, with what the browser printed and how it exited (from its log)."""
    lines = str(getattr(error, "message", None) or error).splitlines()
    said = [
        line.strip().removeprefix("- ")
        for line in lines
        if "Call log" not in line and ("[err]" in line or "process did exit" in line)
    ]
    said = list(dict.fromkeys(said))[-4:]  # the log repeats the browser's lines
    return "; ".join([_first_line(error), *said])


class Page:
    """One tab: navigate, evaluate JavaScript, wait for a condition, click as a person does
    (Playwright's actions: real mouse events, once the element is visible, stable, enabled and
    not covered), take a screenshot. `tab` is the Playwright page itself."""

    def __init__(self, tab: PlaywrightPage):
        self.tab = tab

    def goto(self, url: str, timeout: float = 45) -> None:
        """Navigate and wait for the document's load event (a single-page app renders later:
        follow with `wait_for`)."""
        from playwright.sync_api import Error

        try:
            self.tab.goto(url, wait_until="load", timeout=timeout * 1000)
        except Error as error:
            raise BrowserError(f"could not load {url}: {_first_line(error)}") from None

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (promises are awaited)."""
        from playwright.sync_api import Error

        try:
            return self.tab.evaluate(expression)
        except Error as error:
            raise BrowserError(
                f"JavaScript error in {expression[:80]!r}: {_first_line(error)}"
            ) from None

    def wait_for(self, expression: str, timeout: float = 30, what: str | None = None) -> Any:
        """Poll a JavaScript expression until it is truthy; return its value. Errors while
        polling (a page still loading) count as not yet; the last value or error is reported."""
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
            self.tab.wait_for_timeout(250)
        raise BrowserError(f"timed out after {timeout}s waiting for {what or expression}: {last}")

    def find(self, selector: str, text: str | re.Pattern[str] | None = None) -> Locator:
        """The first element matching `selector` (CSS) whose text contains `text` (or matches
        the pattern), if given."""
        found = self.tab.locator(selector)
        if text is not None:
            found = found.filter(has_text=text)
        return found.first

    def click(
        self, selector: str, text: str | re.Pattern[str] | None = None, timeout: float = 15
    ) -> None:
        """Click the first element matching `selector` whose text contains `text` (or matches
        the pattern)."""
        from playwright.sync_api import Error

        try:
            self.find(selector, text).click(timeout=timeout * 1000)
        except Error as error:
            wanted = selector if text is None else f"{selector} with text {text!r}"
            raise BrowserError(f"could not click {wanted}: {_first_line(error)}") from None

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        self.tab.screenshot(path=str(path), full_page=full_page, timeout=60_000)
        return path


class Chromium:
    """Debian's Chromium, headless, launched by Playwright; every process of it is stopped on
    exit, also on failure (Playwright closes the browser; what survives that is killed).

    Raises `BrowserUnavailable` (with why) when Playwright is missing or cannot start it."""

    def __init__(self, executable: str | None = None, launch_timeout: float = 60):
        found = executable or chromium_path()
        if found is None:
            raise BrowserUnavailable("Chromium is not installed: apt-get install -y chromium")
        self.executable = found
        self._launch_timeout = launch_timeout
        self._marker = f"{MARKER}={uuid.uuid4().hex}"
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None
        self._group: int | None = None

    def __enter__(self) -> Chromium:
        try:
            from playwright.sync_api import sync_playwright
        except ImportError as error:
            raise BrowserUnavailable(f"Playwright is not installed: {error}") from None
        try:
            self._playwright = sync_playwright().start()
        except Exception as error:
            self.__exit__(None, None, None)
            raise BrowserUnavailable(
                f"Playwright's driver did not start: {_first_line(error)}"
            ) from error
        try:
            self._browser = self._playwright.chromium.launch(
                executable_path=self.executable,
                headless=True,
                args=[*CHROMIUM_ARGS, self._marker],
                timeout=self._launch_timeout * 1000,
            )
        except Exception as error:
            self.__exit__(None, None, None)
            raise BrowserUnavailable(
                f"Playwright could not start {self.executable}: {_launch_failure(error)}"
            ) from error
        self.processes()  # note its process group
        return self

    @property
    def version(self) -> str:
        assert self._browser is not None, "not started"
        return self._browser.version

    def new_page(self, width: int = 1440, height: int = 900) -> Page:
        """A tab in a fresh context: a `width`×`height` CSS-pixel viewport at scale 1."""
        assert self._browser is not None, "not started"
        context = self._browser.new_context(
            viewport={"width": width, "height": height}, device_scale_factor=1
        )
        return Page(context.new_page())

    def processes(self) -> list[int]:
        """The ids of this browser's processes still running: its process group (Playwright
        starts the browser as the leader of a group of its own; helpers such as the zygotes
        stay in it), found through the marker the browser process carries."""
        marked = _pids_with(self._marker)
        if self._group is None:
            self._group = next((pid for pid in marked if _group_of(pid) == pid), None)
        if self._group is None:
            return marked
        return [pid for pid in _all_pids() if _group_of(pid) == self._group]

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(Exception):
            self.processes()  # note the group while the browser is up
        browser, self._browser = self._browser, None
        driver, self._playwright = self._playwright, None
        try:
            if browser is not None:
                with contextlib.suppress(Exception):
                    browser.close()
        finally:
            if driver is not None:
                with contextlib.suppress(Exception):
                    driver.stop()  # the driver kills any browser it launched on its way out
            self._stop_leftovers()

    def _stop_leftovers(self, grace: float = 5) -> None:
        """Give the group's helpers `grace` seconds to exit after the browser (about 1.5 s),
        then kill the group (or, had the browser no group of its own, its marked processes),
        and wait until it is gone."""
        deadline = time.monotonic() + grace
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.1)
        deadline = time.monotonic() + 10
        while self.processes() and time.monotonic() < deadline:
            for pid in [self._group] if self._group is not None else self.processes():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    if pid == self._group:
                        os.killpg(pid, signal.SIGKILL)
                    else:
                        os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)


def _all_pids() -> list[int]:
    if not Path("/proc").is_dir():
        return []  # not Linux: Playwright's own cleanup is all there is
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _pids_with(argument: str) -> list[int]:
    found = []
    for pid in _all_pids():
        with contextlib.suppress(OSError):
            if argument.encode() in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
                found.append(pid)
    return found


def _group_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[2])


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
