"""A local EvoLink GPT Image 2 API: a real HTTP server on 127.0.0.1 with faults and a ledger.

It exists so the client, the Prefect tasks and the flows can be tested end to end — including
the failures the real service cannot be asked to produce — without a key and without spending
money. Standard library only; no Prefect imports.

It behaves like a service, not a fixture: like EvoLink it forgets tasks (`task_ttl_seconds`
after they finish: GET answers 404 "Task not found or expired"), result links
(`result_ttl_seconds`) and Idempotency-Keys (`idempotency_ttl_seconds`), all by its own clock,
which `advance_clock` and `age()` (POST /_sim/age) move forward; its ledger, the billing record,
keeps every task. With `state_dir` it survives restarts (`evolink.simulator.state`). Every reply
carries `X-EvoLink-Simulator: 1`, and GET /_sim/health says `"simulator": true`, so it is never
mistaken for the real API.

    from evolink.simulator import EvoLinkSimulator, Fault, FaultRates

    with EvoLinkSimulator(state_dir=".evolink-sim") as sim:   # carries on after a restart
        ...
        sim.age()           # every task, link and key that exists now has expired
"""

from evolink.simulator.account import DEFAULT_API_KEY
from evolink.simulator.chaos import FaultRates
from evolink.simulator.faults import Fault
from evolink.simulator.ledger import LedgerEntry, max_concurrent
from evolink.simulator.png import png_size, render_png
from evolink.simulator.server import SIMULATOR_HEADER, EvoLinkSimulator
from evolink.simulator.state import STATE_FILE_NAME, SimulatorStateError

__all__ = [
    "DEFAULT_API_KEY",
    "SIMULATOR_HEADER",
    "STATE_FILE_NAME",
    "EvoLinkSimulator",
    "Fault",
    "FaultRates",
    "LedgerEntry",
    "SimulatorStateError",
    "max_concurrent",
    "png_size",
    "render_png",
]
