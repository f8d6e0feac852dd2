"""One simulated EvoLink account: what it remembers, by its own clock, and for how long.

Why a module of its own: what the account holds (tasks in creation order, Idempotency-Keys,
request counts, the ledger's records) and how it forgets (task and key TTLs on a clock that
`advance_clock` and `age` move) is one concept; the routes that act on it (`service`, the
public API; `admin`, the `/_sim/*` routes) are others. `snapshot_state` / `restore_state` hand
the state to `evolink.simulator.state` as plain JSON, and `changes` tells that saver when there
is something new to write. All state is behind one lock.

Like the real API it forgets: a task `task_ttl_seconds` after it finished (GET answers 404 "Task
not found or expired", its links 404), an Idempotency-Key `idempotency_ttl_seconds` after its task
was created (the same key then creates, and bills, a new task). Its ledger forgets nothing.
"""

from __future__ import annotations

import math
import random
import secrets
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from evolink.simulator.callbacks import FINAL_STATUSES, CallbackSender
from evolink.simulator.chaos import Chaos, FaultRates
from evolink.simulator.faults import FaultBook
from evolink.simulator.ledger import LedgerEntry, max_concurrent
from evolink.simulator.png import PngCache
from evolink.simulator.tasks import PROGRESS_CURVES, LinkSigner, SimTask

if TYPE_CHECKING:
    from evolink.simulator.files import SimulatorFiles

DEFAULT_API_KEY: Final = "sk-sim-local-demo-key"
"""The simulator's own key: a public test value (printing it leaks nothing)."""
DEFAULT_TASK_TTL_SECONDS: Final = 86400.0
DEFAULT_IDEMPOTENCY_TTL_SECONDS: Final = 86400.0
STATE_FORMAT: Final = "evolink-simulator-state"
STATE_VERSION: Final = 1
ROUTE_NAMES: Final = ("create", "get", "download")


def _ttl(name: str, seconds: float) -> float:
    """A TTL must be a finite number of seconds >= 0 (0: gone the moment it could be)."""
    value = float(seconds)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: must be a finite number of seconds >= 0, got {seconds!r}")
    return value


class SimulatedAccount:
    """State of one simulated EvoLink account: tasks, keys, counts, clock, faults, ledger."""

    files: SimulatorFiles  # its uploads: the Files API, which the service sets up (service.py)

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        generation_seconds: float = 2.0,
        result_ttl_seconds: float = 86400,
        task_ttl_seconds: float = DEFAULT_TASK_TTL_SECONDS,
        idempotency_ttl_seconds: float = DEFAULT_IDEMPOTENCY_TTL_SECONDS,
        seed: int = 0,
        clock: Callable[[], float] = time.time,
        png_cache_bytes: int = 128 * 1024 * 1024,
        chaos: FaultRates | None = None,
        callback_ca_file: str | None = None,
        estimate_factor: float = 1.0,
        estimate_spread: float = 0.0,
        progress_curve: str = "linear",
    ) -> None:
        self.api_key = api_key
        self.generation_seconds = generation_seconds
        self.result_ttl_seconds = result_ttl_seconds
        self.task_ttl_seconds = task_ttl_seconds
        self.idempotency_ttl_seconds = idempotency_ttl_seconds
        self.bill_multiplier = 1.0  # new tasks bill this many times their estimated tokens
        self.estimate_factor = estimate_factor
        self.estimate_spread = estimate_spread
        self.progress_curve = progress_curve
        self.seed = seed
        self._base_clock = clock
        self._clock_offset = 0.0
        self.base_url = "http://127.0.0.1"  # set by the server once bound
        self.fault_book = FaultBook(seed)
        self.chaos = Chaos(seed, chaos)  # random faults by rate (evolink/simulator/chaos.py)
        self.png_cache = PngCache(png_cache_bytes)
        # POSTs finished tasks to their callback_url (evolink/simulator/callbacks.py).
        self.callbacks = CallbackSender(
            self.task_status, self.task_object, ca_file=callback_ca_file
        )
        self._signer = LinkSigner(secrets.token_bytes(32))
        self._lock = threading.RLock()
        # Bumped on every change worth saving (a task created, the clock moved, a reset): a
        # state file's saver compares it with what it last wrote. Without one it is only an int.
        self._changes = 0
        self._reset_state()

    def _reset_state(self) -> None:
        # Task ids, drawn apart from the fault RNG on purpose; not secrets.
        self._ids = random.Random(f"task-ids-{self.seed}")  # nosec B311
        self._tasks: dict[str, SimTask] = {}  # forgotten ones too: the ledger keeps them
        self._order: list[str] = []
        self._idempotency: dict[str, str] = {}  # key → the last task id created with it
        self._counts: dict[str, int] = dict.fromkeys(ROUTE_NAMES, 0)
        self._clock_offset = 0.0

    # --- how long things are remembered -----------------------------------------------------

    @property
    def task_ttl_seconds(self) -> float:
        """New tasks are forgotten by the API this long after they finish (GET → 404)."""
        return self._task_ttl_seconds

    @task_ttl_seconds.setter
    def task_ttl_seconds(self, seconds: float) -> None:
        self._task_ttl_seconds = _ttl("task_ttl_seconds", seconds)

    @property
    def idempotency_ttl_seconds(self) -> float:
        """New tasks' Idempotency-Keys replay them this long after they were created."""
        return self._idempotency_ttl_seconds

    @idempotency_ttl_seconds.setter
    def idempotency_ttl_seconds(self, seconds: float) -> None:
        self._idempotency_ttl_seconds = _ttl("idempotency_ttl_seconds", seconds)

    @property
    def changes(self) -> int:
        """How many savable changes so far (tasks created, clock moves, resets, files)."""
        return self._changes + self.files.changes

    # --- how wrong the estimate is, how progress moves --------------------------------------

    @property
    def progress_curve(self) -> str:
        """Progress curve of new tasks: a name in `tasks.PROGRESS_CURVES`."""
        return self._progress_curve

    @progress_curve.setter
    def progress_curve(self, name: str) -> None:
        if name not in PROGRESS_CURVES:
            raise ValueError(f"progress_curve: one of {sorted(PROGRESS_CURVES)}, got {name!r}")
        self._progress_curve = name

    def estimated_seconds(self, true_seconds: float, stream: str) -> float:
        """What a new task's `estimated_time` says: the true time × `estimate_factor` × a draw
        in 1 ± `estimate_spread`, seeded by (seed, what the task is about) like chaos draws,
        so the same requests get the same estimates whatever their order."""
        factor = self.estimate_factor
        if self.estimate_spread:
            rng = random.Random(f"estimate-{self.seed}-{stream}")  # nosec B311 - not a secret
            factor *= 1 + rng.uniform(-self.estimate_spread, self.estimate_spread)
        return true_seconds * factor

    # --- time -----------------------------------------------------------------------------

    def now(self) -> float:
        """The simulator's Unix time: the real clock plus whatever `advance_clock` added."""
        return self._base_clock() + self._clock_offset

    def advance_clock(self, seconds: float) -> float:
        """Jump ahead (tasks finish, links expire) without sleeping; returns the new offset."""
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError("the simulator's clock only moves forward, by a finite amount")
        with self._lock:
            self._clock_offset += seconds
            self._changes += 1
            return self._clock_offset

    @property
    def clock_offset(self) -> float:
        """Seconds `advance_clock` has added to the real clock so far."""
        return self._clock_offset

    def seconds_to_expire_everything(self) -> float:
        """How far the clock must move for every task, link and Idempotency-Key that exists
        now to be gone: the longest TTL plus the longest generation time still to run, plus
        1 s — or more, if a task was created under longer TTLs than today's."""
        with self._lock:
            now = self.now()
            tasks = list(self._tasks.values())
        longest_ttl = max(
            self.task_ttl_seconds, self.idempotency_ttl_seconds, self.result_ttl_seconds
        )
        running = max((task.finish_at - now for task in tasks), default=0.0)
        latest = max((task.expires_entirely_at - now for task in tasks), default=0.0)
        uploads = self.files.seconds_to_expire_all(now)
        return max(longest_ttl + max(running, 0.0), latest, uploads) + 1.0

    def age(self, seconds: float | None = None) -> float:
        """Move the clock `seconds` forward — None: far enough that every task, link and key
        that exists now has expired (`seconds_to_expire_everything`). Returns the seconds aged.
        Tasks still generating finish by the aged clock, as they would have by then."""
        with self._lock:
            aged = self.seconds_to_expire_everything() if seconds is None else float(seconds)
            self.advance_clock(aged)
        return aged

    def forgotten_count(self) -> int:
        """How many tasks the API has forgotten by now (all still in the ledger)."""
        with self._lock:
            now = self.now()
            return sum(1 for task in self._tasks.values() if task.forgotten_at(now))

    def _known(self, task_id: str, now: float) -> SimTask | None:
        """The task as the API sees it (lock held): None if it never existed or is forgotten."""
        task = self._tasks.get(task_id)
        return None if task is None or task.forgotten_at(now) else task

    # --- inspection -----------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every task, key, count and fault: afterwards it behaves like a fresh simulator
        (the link-signing secret stays; links of the forgotten tasks answer 404)."""
        with self._lock:
            self._reset_state()
            self._changes += 1
        self.fault_book.reset()
        self.files.reset()
        self.chaos.reset()
        self.png_cache.clear()
        self.callbacks.forget()

    def close(self) -> None:
        """Stop sending callbacks (the server calls this when it stops)."""
        self.callbacks.close()

    def ledger(self) -> list[LedgerEntry]:
        """Every task ever billed, forgotten ones too (`forgotten`), in creation order."""
        now = self.now()
        with self._lock:
            return [self._tasks[task_id].ledger_entry(now) for task_id in self._order]

    def request_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def task_status(self, task_id: str) -> str | None:
        """The task's status now; None if unknown or forgotten (no callback is sent then)."""
        with self._lock:
            now = self.now()
            task = self._known(task_id, now)
            return None if task is None else task.status_at(now)

    def task_object(self, task_id: str) -> dict[str, Any] | None:
        """The task as GET shows it now; None if unknown or forgotten."""
        with self._lock:
            now = self.now()
            task = self._known(task_id, now)
            return None if task is None else task.to_api(now, self.base_url, self._signer)

    def stats(self) -> dict[str, Any]:
        entries = self.ledger()
        return {
            "request_counts": self.request_counts(),
            "fault_counts": self.fault_book.counts(),
            "chaos_counts": self.chaos.counts(),
            "tasks": len(entries),
            "forgotten_tasks": sum(1 for entry in entries if entry.forgotten),
            "max_concurrent_processing": max_concurrent(entries, now=self.now()),
            "clock_offset_seconds": self._clock_offset,
            "billed_usd": str(sum((e.billed_usd for e in entries), Decimal(0))),
            "billed_credits": str(sum((e.billed_credits for e in entries), Decimal(0))),
        }

    def task_count(self) -> int:
        """How many tasks were ever created, forgotten ones too (the ledger's length)."""
        with self._lock:
            return len(self._order)

    # --- the state file (evolink/simulator/state.py writes and reads it) ----------------------

    def snapshot_state(self) -> dict[str, Any]:
        """Everything a restarted simulator needs to carry on as if it never stopped, as JSON:
        the tasks in creation order (the idempotency map is rebuilt from them), the link-signing
        secret (links issued before a restart still verify), the clock offset, the task-id
        generator and the request counts. Not the fault and chaos books (configuration), nor
        the PNG cache (images are re-rendered, deterministically)."""
        with self._lock:
            tasks = [self._tasks[task_id] for task_id in self._order]
            version, internal, gauss = self._ids.getstate()
            document: dict[str, Any] = {
                "format": STATE_FORMAT,
                "version": STATE_VERSION,
                "clock_offset_seconds": self._clock_offset,
                "link_secret": self._signer.secret.hex(),
                "task_id_rng": [version, list(internal), gauss],
                "request_counts": dict(self._counts),
            }
        # Tasks never change once created and cache their JSON, so this is cheap outside the lock.
        document["tasks"] = [task.to_state() for task in tasks]
        document["files"] = self.files.snapshot_state()
        return document

    def restore_state(self, document: dict[str, Any]) -> None:
        """Carry on from a `snapshot_state` document (replacing whatever is here). Raises
        KeyError, TypeError or ValueError, leaving this service untouched, if it is malformed.
        Tasks still running get their callbacks watched again."""
        if document.get("format") != STATE_FORMAT or document.get("version") != STATE_VERSION:
            raise ValueError(f"not a {STATE_FORMAT} document of version {STATE_VERSION}")
        tasks = [SimTask.from_state(item) for item in document["tasks"]]
        files = self.files.parse_state(document.get("files"))
        by_id = {task.id: task for task in tasks}
        if len(by_id) != len(tasks):
            raise ValueError("a task id appears twice")
        idempotency = {task.idempotency_key: task.id for task in tasks if task.idempotency_key}
        offset = float(document["clock_offset_seconds"])
        if not math.isfinite(offset) or offset < 0:
            raise ValueError("clock_offset_seconds: must be a finite number >= 0")
        secret = bytes.fromhex(document["link_secret"])
        if len(secret) < 16:
            raise ValueError("link_secret: too short")
        version, internal, gauss = document["task_id_rng"]
        # Task ids, not secrets.
        ids = random.Random()  # nosec B311
        ids.setstate((int(version), tuple(int(n) for n in internal), gauss))
        counts = dict.fromkeys(ROUTE_NAMES, 0)
        counts.update({str(k): int(v) for k, v in dict(document["request_counts"]).items()})
        with self._lock:
            self._tasks, self._order, self._idempotency = by_id, [t.id for t in tasks], idempotency
            self._clock_offset = offset
            self._signer = LinkSigner(secret)
            self._ids = ids
            self._counts = counts
            self.files.install_state(files)
            self._changes += 1
            now = self.now()
            for task in tasks:
                if task.request.callback_url and task.status_at(now) not in FINAL_STATUSES:
                    self.callbacks.watch(task.id, task.request.callback_url)
