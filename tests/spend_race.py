"""One racer of tests/test_spend.py's cross-process race: a process that reserves against a spend
cap on a local storage, as a task worker's capped product does (`reserve_spend`).

    python -m tests.spend_race BASE_DIR MEETING NAME RACERS CAP_USD ESTIMATE_USD locked|unlocked

`MEETING` is a folder the racers and the test share:

1. the racer imports everything, writes `ready-<name>` and waits for the test's `go` (so the
   racers start together, whatever their import times);
2. it writes `attempt-<name>` just before it asks for the spend cap lock (`unlocked`: the lock
   is replaced by nothing, to show what the lock prevents);
3. inside the check (`cap_spend`, under the lock), after reading the spend, it writes
   `inside-<name>` and counts the racers inside; then it waits until every racer has written
   its attempt (30 s at most), so that, without the lock, their checks overlap for sure, and
   then until every racer is inside: 30 s at most without the lock (they all are, after reading
   the spend), 0.5 s with it (nobody else can be: the time a broken lock needs to show);
4. it writes `result-<name>.json`: passed or refused, and the most racers it saw inside at once.

No Prefect API is needed: outside a flow run, a reservation names no flow run to look up.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

from evolink.errors import SpendCapExceededError
from prefect_evolink.blocks import EvoLinkSpendCap, LocalAssetStorage
from prefect_evolink.tasks import spend_cap as spend_cap_tasks

DEADLINE_SECONDS = 30.0


def wait_for(condition: Any, what: str, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {seconds:g} s")
        time.sleep(0.01)


async def race(
    base: Path, meeting: Path, name: str, racers: int, cap_usd: str, estimate: str, locked: bool
) -> dict[str, Any]:
    real_lock, real_read = spend_cap_tasks.spend_cap_lock, spend_cap_tasks.cap_spend
    seen = {"peak": 0}

    @asynccontextmanager
    async def watched_lock(*args: Any, **kwargs: Any) -> AsyncIterator[None]:
        (meeting / f"attempt-{name}").touch()
        if locked:
            async with real_lock(*args, **kwargs):
                yield
        else:
            yield

    def count(what: str) -> int:
        return len(list(meeting.glob(f"{what}-*")))

    async def until(condition: Any, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            seen["peak"] = max(seen["peak"], count("inside"))
            if condition():
                return
            await asyncio.sleep(0.02)

    async def held_read(*args: Any, **kwargs: Any) -> Any:
        found = await real_read(*args, **kwargs)
        inside = meeting / f"inside-{name}"
        inside.touch()
        try:
            await until(lambda: count("attempt") == racers, DEADLINE_SECONDS)
            # Without the lock, the others read the spend meanwhile and come in: wait for them
            # all. With it, nobody else can; 0.5 s gives a broken lock the time to show.
            await until(lambda: count("inside") == racers, 0.5 if locked else DEADLINE_SECONDS)
            return found
        finally:
            inside.unlink()

    spend_cap_tasks.spend_cap_lock = watched_lock
    spend_cap_tasks.cap_spend = held_read
    storage = LocalAssetStorage(base_dir=str(base))
    cap = EvoLinkSpendCap(limit_usd=Decimal(cap_usd))
    try:
        reservation = await spend_cap_tasks.reserve_spend(
            cap, storage, Decimal(estimate), f"product {name}"
        )
    except SpendCapExceededError as error:
        return {"passed": False, "refusal": str(error), "peak_inside": seen["peak"]}
    assert reservation.key is not None  # kept: the run is still "running"
    return {"passed": True, "refusal": None, "peak_inside": seen["peak"]}


def main(argv: list[str]) -> int:
    base, meeting, name, racers, cap_usd, estimate, mode = argv
    where = Path(meeting)
    (where / f"ready-{name}").touch()
    wait_for((where / "go").exists, "go")
    outcome = asyncio.run(
        race(Path(base), where, name, int(racers), cap_usd, estimate, mode == "locked")
    )
    (where / f"result-{name}.json").write_text(json.dumps(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
