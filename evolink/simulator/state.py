"""The simulator's state on disk, so a restarted simulator carries on as if it never stopped.

Why: a simulator that forgets everything on restart is not a service. Scripts and workers that
were pointed at it (EVOLINK_BASE_URL) hold task ids, Idempotency-Keys and result links; after a
restart with the same `state_dir` those still mean what they meant — GET finds the task, a link
still verifies until it expires, the same key replays the same task, the ledger has every bill —
and the simulator listens on the same port if it is free.

One file, `<state_dir>/simulator-state.json`, written whole: to a temporary file in the same
directory, flushed to disk, then `os.replace`d over the old one, so a crash leaves the old state
or the new one, never half a file. It holds the link-signing secret, so it is created 0600.

Saving is write-behind: the service counts its changes (`SimulatedAccount.changes`: a task
created, the clock moved, a reset) and `WriteBehind` writes at most every `SAVE_INTERVAL_SECONDS`
from a daemon thread when the count moved, plus once more when the simulator stops. A simulator
without a state dir has none of this: no thread, no file, nothing slower.

A file that cannot be read back (not JSON, another format, a malformed task) raises
`SimulatorStateError` naming the file, instead of starting empty and silently losing the tasks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

log = logging.getLogger("evolink.simulator.state")

STATE_FILE_NAME: Final = "simulator-state.json"
SAVE_INTERVAL_SECONDS: Final = 0.25


class SimulatorStateError(RuntimeError):
    """The state file exists but cannot be used; the message names the file and the problem.
    The simulator's own error, not the client's family (`evolink.errors`): it stands in for
    EvoLink's service, and nothing of the client or the flows raises it."""


class StateFile:
    """`<directory>/simulator-state.json`: read whole, written whole and atomically."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / STATE_FILE_NAME

    def error(self, problem: str) -> SimulatorStateError:
        """An error that says which file, what is wrong and what to do about it."""
        return SimulatorStateError(
            f"simulator state file {self.path}: {problem}. Fix it, or move it away to start "
            "with an empty simulator."
        )

    def load(self) -> dict[str, Any] | None:
        """The saved document, or None if there is no file yet (a first start)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as error:
            raise self.error(f"cannot be read ({error})") from error
        try:
            document = json.loads(text)
        except ValueError as error:
            raise self.error(f"is not valid JSON ({error}); was it cut short or edited?") from error
        if not isinstance(document, dict):
            raise self.error(f"holds a JSON {type(document).__name__}, not an object")
        return document

    def save(self, document: dict[str, Any]) -> None:
        """Replace the file with `document`, atomically (temp file, fsync, os.replace)."""
        text = json.dumps(document, separators=(",", ":"), allow_nan=False)
        self.directory.mkdir(parents=True, exist_ok=True)
        # mkstemp creates the file 0600: it holds the secret that signs result links.
        fd, temporary = tempfile.mkstemp(
            prefix=".simulator-state-", suffix=".tmp", dir=self.directory
        )
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise


class WriteBehind:
    """Saves `document()` to `state` whenever `changes()` has moved, at most every `interval`
    seconds, from a daemon thread; `save_now` saves at once (start, stop).

    Saves are serialised under one lock, so a slow background save can never overwrite a newer
    one made by `save_now`.
    """

    def __init__(
        self,
        state: StateFile,
        changes: Callable[[], int],
        document: Callable[[], dict[str, Any]],
        *,
        interval: float = SAVE_INTERVAL_SECONDS,
    ) -> None:
        self.state = state
        self._changes = changes
        self._document = document
        self.interval = interval
        self._lock = threading.Lock()
        self._saved: int | None = None  # the change count last written
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the background saver (a no-op if it runs)."""
        if self._thread is not None:
            return
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(self._stop,), name="evolink-sim-state", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the background saver; it finishes a save it is in the middle of."""
        thread, self._thread = self._thread, None
        self._stop.set()
        if thread is not None:
            thread.join(timeout=10)

    def save_now(self) -> None:
        """Write the current document whatever the change count says."""
        with self._lock:
            changes = self._changes()  # read first: a change made while saving is saved later
            self.state.save(self._document())
            self._saved = changes

    def save_if_changed(self) -> bool:
        """Write if anything changed since the last save; True if it wrote."""
        if self._changes() == self._saved:
            return False
        self.save_now()
        return True

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            try:
                self.save_if_changed()
            except Exception:  # a full disk must not kill the saver: the next change retries
                log.exception("could not save the simulator state to %s", self.state.path)
