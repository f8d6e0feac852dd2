"""Serving the callback receiver: uvicorn, under a guard of the connections themselves.

`serve` runs the ASGI app (`prefect_evolink.tasks.callbacks.CallbackReceiver`) with uvicorn's
h11 protocol on the plain asyncio loop. Below the app, `ConnectionGuard` guards the connections:
the listening socket's accept() (`GuardedListener`, made by `bind`) enforces a per-source and a
total connection cap, and a sweep every half second resets connections past their phase's
deadline — TLS handshake, request (headers and body, in all), app, keep-alive idle, closing. An
ASGI app never sees a request whose headers never complete, so this is the only place a header
deadline can live.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from evolink.callbacks import (
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_SOURCE,
    READ_TIMEOUT_SECONDS,
)
from prefect_evolink.tasks.callbacks import CallbackReceiver, logger

KEEP_ALIVE_SECONDS: Final = 5
CLOSING_TIMEOUT_SECONDS: Final = 5.0
APP_TIMEOUT_SECONDS: Final = 30.0
"""A safety net: the app bounds its own work (storage, then the API's 8 s)."""
MAX_HEADER_BYTES: Final = 16 * 1024
SWEEP_TICKS: Final = 5  # uvicorn ticks every 0.1 s: a sweep every 0.5 s


# --- connections: caps and deadlines below the app ------------------------------------------

HANDSHAKE: Final = "handshake"
REQUEST: Final = "request"
APP: Final = "app"
IDLE: Final = "idle"
CLOSING: Final = "closing"
RESET: Final = "reset"
_WHY: Final = {
    HANDSHAKE: "no TLS handshake",
    REQUEST: "no complete request (headers and body)",
    APP: "no answer",
    IDLE: "idle",
    CLOSING: "not closed",
}


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Caps on open connections and each phase's deadline in seconds."""

    max_connections: int = MAX_CONNECTIONS
    per_source: int = MAX_CONNECTIONS_PER_SOURCE
    handshake: float = READ_TIMEOUT_SECONDS
    request: float = READ_TIMEOUT_SECONDS
    app: float = APP_TIMEOUT_SECONDS
    idle: float = KEEP_ALIVE_SECONDS + CLOSING_TIMEOUT_SECONDS
    closing: float = CLOSING_TIMEOUT_SECONDS

    def deadline(self, phase: str) -> float:
        return float(getattr(self, phase, CLOSING_TIMEOUT_SECONDS))


@dataclass(slots=True)
class _Connection:
    sock: socket.socket
    source: str
    phase: str
    since: float
    protocol: Any = None  # uvicorn's protocol, once TLS is done
    exempt: bool = False


@dataclass
class ConnectionGuard:
    """Every accepted connection, its source and phase; caps at accept, deadlines by sweep.

    Runs on the server's event loop only (accept, protocol callbacks and the sweep all do), so
    it needs no lock. `exempt(source)` spares trusted proxies the per-source cap: behind one,
    every connection comes from it."""

    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    tls: bool = True
    exempt: Callable[[str], bool] = lambda source: False
    clock: Callable[[], float] = time.monotonic
    totals: Counter[str] = field(default_factory=Counter)
    _open: dict[int, _Connection] = field(default_factory=dict)
    _per_source: Counter[str] = field(default_factory=Counter)
    _refused: Counter[str] = field(default_factory=Counter)

    def admit(self, sock: socket.socket, address: Any) -> bool:
        """Whether to keep a just-accepted connection (the caller resets it when not)."""
        source = _address_host(address)
        fd = sock.fileno()
        if fd in self._open:  # the descriptor was reused: that connection is gone
            self._forget(fd)
        exempt = self.exempt(source)
        if not self._room_for(source, exempt):
            self._prune()  # closed ones may not have been noticed yet
            if not self._room_for(source, exempt):
                self._refused[source] += 1
                self.totals["refused"] += 1
                return False
        phase = HANDSHAKE if self.tls else REQUEST
        self._open[fd] = _Connection(sock, source, phase, self.clock(), exempt=exempt)
        self._per_source[source] += 1
        return True

    def _room_for(self, source: str, exempt: bool) -> bool:
        if len(self._open) >= self.limits.max_connections:
            return False
        return exempt or self._per_source[source] < self.limits.per_source

    def attach(self, fd: int, protocol: Any) -> None:
        """TLS is done: the protocol takes over; its first request's deadline starts now."""
        connection = self._open.get(fd)
        if connection is not None:
            connection.protocol = protocol
            connection.phase, connection.since = REQUEST, self.clock()

    def enter(self, fd: int, protocol: Any, phase: str) -> None:
        """The protocol moved to `phase`; staying in one keeps its start (a trickle of bytes
        never buys a slow request more time)."""
        connection = self._open.get(fd)
        if connection is None or connection.protocol is not protocol:
            return
        if connection.phase not in (phase, RESET):
            connection.phase, connection.since = phase, self.clock()

    def release(self, fd: int, protocol: Any) -> None:
        connection = self._open.get(fd)
        if connection is not None and connection.protocol is protocol:
            self._forget(fd)

    def _forget(self, fd: int) -> None:
        connection = self._open.pop(fd)
        self._per_source[connection.source] -= 1
        if self._per_source[connection.source] <= 0:
            del self._per_source[connection.source]

    def _prune(self) -> None:
        for fd, connection in list(self._open.items()):
            if connection.sock.fileno() == -1:
                self._forget(fd)

    def sweep(self) -> None:
        """Reset every connection past its phase's deadline; report refusals since the last
        sweep (one line per source, not one per connection)."""
        now = self.clock()
        self._prune()
        for connection in list(self._open.values()):
            protocol = connection.protocol
            transport = getattr(protocol, "transport", None)
            closing = transport is not None and transport.is_closing()
            if closing and connection.phase not in (CLOSING, RESET):
                connection.phase, connection.since = CLOSING, now
            if connection.phase == RESET:
                if now - connection.since >= self.limits.closing:  # still there: the socket
                    _shutdown(connection.sock)
                continue
            if now - connection.since < self.limits.deadline(connection.phase):
                continue
            self.totals[f"deadline_{connection.phase}"] += 1
            if connection.phase != CLOSING:
                logger.info(
                    "connection from %s reset: %s within %g s",
                    connection.source,
                    _WHY[connection.phase],
                    self.limits.deadline(connection.phase),
                )
            connection.phase, connection.since = RESET, now
            if transport is not None:
                transport.abort()
            else:
                _shutdown(connection.sock)
        for source, count in self._refused.items():
            logger.warning(
                "refused %d connection(s) from %s: %s",
                count,
                source,
                f"over {self.limits.per_source} per source"
                if len(self._open) < self.limits.max_connections
                else f"over {self.limits.max_connections} in all",
            )
        self._refused.clear()

    def stats(self) -> dict[str, Any]:
        """For /healthz (details): what is open now, what was refused or reset so far."""
        phases = Counter(connection.phase for connection in self._open.values())
        return {
            "open": len(self._open),
            "sources": len(self._per_source),
            "phases": dict(phases),
            **dict(self.totals),
        }


def _address_host(address: Any) -> str:
    if isinstance(address, tuple) and address:
        return str(address[0])
    return "unix" if isinstance(address, str | bytes) else "?"


def _shutdown(sock: socket.socket) -> None:
    """End a connection under asyncio's feet without closing its descriptor (asyncio does
    that when it reads the EOF), so no descriptor is reused while the loop still watches it."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class GuardedListener(socket.socket):
    """A listening socket whose accept() asks the `ConnectionGuard` (when one is set) and
    resets what it refuses, before asyncio, TLS or uvicorn spend anything on it."""

    guard: ConnectionGuard | None = None

    def accept(self) -> tuple[socket.socket, Any]:
        for _ in range(64):  # then let the loop run; the rest is accepted on the next round
            conn, address = super().accept()  # BlockingIOError when none is waiting
            guard = self.guard
            if guard is None or guard.admit(conn, address):
                return conn, address
            with contextlib.suppress(OSError):  # RST at once: no TIME_WAIT for refusals
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
        raise BlockingIOError


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket on host:port (0 picks a free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = GuardedListener(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def _trusted_proxies(spec: str | None) -> Callable[[str], bool]:
    """`--forwarded-allow-ips` as a test: addresses and networks, comma-separated; "*" all."""
    items = [item.strip() for item in (spec or "").split(",") if item.strip()]
    if "*" in items:
        return lambda source: True
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    names: set[str] = set()
    for item in items:
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            names.add(item)

    def trusted(source: str) -> bool:
        if source in names:
            return True
        try:
            address = ipaddress.ip_address(source)
        except ValueError:
            return False
        return any(address in network for network in networks)

    return trusted


def _guarded_protocol(guard: ConnectionGuard) -> type[Any]:
    """uvicorn's h11 protocol, reporting each connection's phase to `guard`."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    def fd_of(transport: Any) -> int:
        sock = transport.get_extra_info("socket")
        return int(sock.fileno()) if sock is not None else -1

    class GuardedH11Protocol(H11Protocol):
        _guard_fd = -1

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._guard_fd = fd_of(transport)
            guard.attach(self._guard_fd, self)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._report(arrived=True)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._report(arrived=False)

        def connection_lost(self, exc: Exception | None) -> None:
            guard.release(self._guard_fd, self)
            super().connection_lost(exc)

        def _report(self, *, arrived: bool) -> None:
            state = self.conn.their_state
            if state is h11.SEND_BODY:
                phase = REQUEST
            elif state is h11.IDLE:  # between requests, or some of the next one's headers
                pending = arrived or bool(self.conn.trailing_data[0])
                phase = REQUEST if pending else IDLE
            else:  # the request is in: the app's turn, or closing
                phase = APP
            guard.enter(self._guard_fd, self, phase)

    return GuardedH11Protocol


def serve(
    receiver: CallbackReceiver,
    sock: socket.socket,
    *,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    forwarded_allow_ips: str | None = None,
    on_ready: Callable[[], None] | None = None,
    log_level: str = "info",
) -> None:
    """Run `receiver` under uvicorn on `sock` until SIGINT/SIGTERM; `on_ready` once it
    accepts connections.

    uvicorn runs its h11 protocol on the plain asyncio loop here (not httptools or uvloop), as
    the connection guard needs both: connections are capped at accept and reset past their
    deadlines (`ConnectionGuard`). Proxy headers are believed only from `forwarded_allow_ips`;
    without it, a TLS receiver trusts none (it faces the internet itself) and a plain-http one
    trusts loopback (uvicorn's default: a proxy on the same host)."""
    import uvicorn

    settings = receiver.settings
    tls = ssl_certfile is not None
    proxies = forwarded_allow_ips
    if proxies is None and not tls:
        proxies = "127.0.0.1,::1"
    guard = ConnectionGuard(
        ConnectionLimits(
            max_connections=settings.max_connections,
            per_source=settings.max_connections_per_source,
            handshake=settings.read_timeout,
            request=settings.read_timeout,
        ),
        tls=tls,
        exempt=_trusted_proxies(proxies),
    )
    listener = (
        sock
        if isinstance(sock, GuardedListener)
        else GuardedListener(sock.family, sock.type, sock.proto, fileno=os.dup(sock.fileno()))
    )
    listener.guard = guard
    receiver.connection_stats = guard.stats
    level = logger.level
    logger.setLevel(logging.DEBUG if log_level == "debug" else logging.INFO)

    class _Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started and on_ready is not None:
                on_ready()

        async def on_tick(self, counter: int) -> bool:
            if counter % SWEEP_TICKS == 0:
                guard.sweep()
            return await super().on_tick(counter)

    config = uvicorn.Config(
        receiver,
        http=_guarded_protocol(guard),
        loop="asyncio",
        lifespan="on",
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        proxy_headers=proxies is not None,
        forwarded_allow_ips=proxies,
        log_level=log_level,
        access_log=False,  # one log line per request comes from the receiver itself
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=int(CLOSING_TIMEOUT_SECONDS),
        limit_concurrency=settings.max_connections + 1,  # the guard's cap is the one that acts
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
    )
    try:
        _Server(config).run(sockets=[listener])
    finally:
        logger.setLevel(level)
        listener.guard = None
        receiver.connection_stats = None
        if listener is not sock:
            listener.close()
