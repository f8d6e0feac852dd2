"""The simulator's admin routes, `/_sim/*`: inspect the account, arm faults, move its clock.

Why apart from `service`: these routes are the test harness's controls, not EvoLink's API — they
are answered on loopback only (`SimulatorService.dispatch` refuses them otherwise), bill nothing
and are documented in `python -m evolink.simulator --help`. They act on the account only
through its public methods (`account.SimulatedAccount`).
"""

from __future__ import annotations

import json

from evolink.simulator.account import SimulatedAccount
from evolink.simulator.chaos import FaultRates
from evolink.simulator.faults import Fault
from evolink.simulator.replies import Reply, invalid_request, json_reply, not_found


def admin_reply(service: SimulatedAccount, method: str, path: str, body: bytes) -> Reply:
    """Answer one `/_sim/*` request (the caller has checked it came from loopback)."""
    if (method, path) == ("GET", "/_sim/health"):
        tasks = service.task_count()
        return json_reply(
            {
                "status": "ok",
                "simulator": True,  # not the real EvoLink API: nothing here is billed
                "base_url": service.base_url,
                "tasks": tasks,
                "forgotten_tasks": service.forgotten_count(),
                "clock_offset_seconds": service.clock_offset,
            }
        )
    if (method, path) == ("GET", "/_sim/ledger"):
        return json_reply([entry.to_json() for entry in service.ledger()])
    if (method, path) == ("GET", "/_sim/stats"):
        return json_reply(service.stats())
    if (method, path) == ("GET", "/_sim/faults"):
        return json_reply([fault.to_dict() for fault in service.fault_book.snapshot()])
    if (method, path) == ("POST", "/_sim/faults"):
        return _add_faults(service, body)
    if (method, path) == ("GET", "/_sim/callbacks"):
        return json_reply([attempt.to_json() for attempt in service.callbacks.attempts()])
    if (method, path) == ("GET", "/_sim/chaos"):
        return _chaos_reply(service)
    if (method, path) == ("POST", "/_sim/chaos"):
        return _set_chaos(service, body)
    if (method, path) == ("POST", "/_sim/clock"):
        return _advance_clock(service, body)
    if (method, path) == ("POST", "/_sim/age"):
        return _age(service, body)
    if (method, path) == ("POST", "/_sim/reset"):
        service.reset()
        return json_reply({"status": "reset"})
    return not_found(f"No admin route {method} {path}")


def _add_faults(service: SimulatedAccount, raw: bytes) -> Reply:
    """Body: one fault object or a list of them; all are validated before any is armed."""
    try:
        data = json.loads(raw or b"null")
        specs = data if isinstance(data, list) else [data]
        faults = [Fault.from_dict(spec) for spec in specs]
    except (ValueError, TypeError) as error:
        return invalid_request(str(error))
    armed = [service.fault_book.add(fault) for fault in faults]
    return json_reply({"added": len(armed), "faults": [f.to_dict() for f in armed]})


def _chaos_reply(service: SimulatedAccount) -> Reply:
    rates = service.chaos.rates
    return json_reply(
        {"rates": None if rates is None else rates.to_dict(), "counts": service.chaos.counts()}
    )


def _set_chaos(service: SimulatedAccount, raw: bytes) -> Reply:
    """Body: the `FaultRates` fields as an object (missing ones default), or null for off."""
    try:
        data = json.loads(raw or b"null")
        rates = None if data is None else FaultRates.from_dict(data)
    except (ValueError, TypeError) as error:
        return invalid_request(str(error))
    service.chaos.rates = rates
    return _chaos_reply(service)


def _advance_clock(service: SimulatedAccount, raw: bytes) -> Reply:
    """Body: {"advance": seconds}."""
    try:
        seconds = float(json.loads(raw or b"{}")["advance"])
        offset = service.advance_clock(seconds)
    except (ValueError, TypeError, KeyError) as error:
        return invalid_request(f'expected {{"advance": seconds >= 0}}: {error}')
    return json_reply({"clock_offset_seconds": offset, "now": service.now()})


def _age(service: SimulatedAccount, raw: bytes) -> Reply:
    """Body: {"seconds": N} to age by N seconds; {} or {"expire": true} to age until every
    task, link and Idempotency-Key that exists now has expired."""
    try:
        data = json.loads(raw or b"{}")
        if not isinstance(data, dict):
            raise ValueError("the body must be a JSON object")
        unknown = sorted(set(data) - {"seconds", "expire"})
        if unknown:
            raise ValueError(f"unknown field(s): {', '.join(unknown)}")
        seconds, expire = data.get("seconds"), data.get("expire")
        if expire not in (None, True, False):
            raise ValueError("expire: must be true or false")
        if seconds is not None:
            if expire or isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
                raise ValueError("seconds: a number >= 0 (and not together with expire)")
            aged = service.age(float(seconds))
        elif expire is False:
            raise ValueError("expire false and no seconds: nothing to do")
        else:
            aged = service.age(None)
    except ValueError as error:
        return invalid_request(f'expected {{"seconds": N >= 0}} or {{"expire": true}}: {error}')
    tasks = service.task_count()
    return json_reply(
        {
            "aged_seconds": aged,
            "clock_offset_seconds": service.clock_offset,
            "now": service.now(),
            "tasks": tasks,
            "forgotten_tasks": service.forgotten_count(),
        }
    )
