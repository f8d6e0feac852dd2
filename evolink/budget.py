"""A spending cap that holds while assets run concurrently.

Every request reserves its estimate before it is sent and settles to its bill afterwards; a
request is refused when it does not fit what is neither spent nor reserved. Estimates can be
wrong, so reservations are *calibrated*: once bills come in higher than their estimates, later
reservations are scaled by the observed ratio (never below 1). A run whose bills run 50 % over
estimate then stops its finals early instead of finding out after paying for all of them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from decimal import Decimal


@dataclass
class Budget:
    limit_usd: Decimal
    spent_usd: Decimal = Decimal(0)
    reserved_usd: Decimal = Decimal(0)
    estimated_settled_usd: Decimal = Decimal(0)  # estimates of the jobs whose bills we know
    billed_settled_usd: Decimal = Decimal(0)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    @property
    def left_usd(self) -> Decimal:
        return self.limit_usd - self.spent_usd - self.reserved_usd

    @property
    def calibration(self) -> Decimal:
        """Observed bill / estimate ratio so far, at least 1."""
        if self.estimated_settled_usd <= 0:
            return Decimal(1)
        return max(Decimal(1), self.billed_settled_usd / self.estimated_settled_usd)

    async def reserve(self, estimate: Decimal) -> Decimal | None:
        """Hold a request's calibrated estimate; the amount held, or None when it does not fit."""
        async with self._lock:
            amount = estimate * self.calibration
            if amount > self.left_usd:
                return None
            self.reserved_usd += amount
            return amount

    async def settle(self, reserved: Decimal, estimate: Decimal, billed: Decimal | None) -> None:
        """Replace a reservation by the bill (the reservation stands in for an unknown bill)."""
        async with self._lock:
            self.reserved_usd -= reserved
            self.spent_usd += reserved if billed is None else billed
            if billed is not None:
                self.estimated_settled_usd += estimate
                self.billed_settled_usd += billed

    async def release(self, reserved: Decimal) -> None:
        """A reservation whose request cost nothing (failed before or at the provider)."""
        async with self._lock:
            self.reserved_usd -= reserved
