"""A local EvoLink GPT Image 2 API: a real HTTP server on 127.0.0.1 with faults and a ledger.

It exists so the client, the Prefect tasks and the flows can be tested end to end — including
the failures the real service cannot be asked to produce — without a key and without spending
money. Standard library only; no Prefect imports.

    from evolink.simulator import EvoLinkSimulator, Fault, FaultRates
"""

from evolink.simulator.chaos import FaultRates
from evolink.simulator.faults import Fault
from evolink.simulator.ledger import LedgerEntry, max_concurrent
from evolink.simulator.png import png_size, render_png
from evolink.simulator.server import EvoLinkSimulator
from evolink.simulator.service import DEFAULT_API_KEY

__all__ = [
    "DEFAULT_API_KEY",
    "EvoLinkSimulator",
    "Fault",
    "FaultRates",
    "LedgerEntry",
    "max_concurrent",
    "png_size",
    "render_png",
]
