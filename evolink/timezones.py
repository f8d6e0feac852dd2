"""Time zones by IANA name, with an error that says which name was wrong.

A module of its own because the `EvoLinkSpendCap` block validates its `timezone` with it, and the
blocks are what Prefect imports whenever it loads collections (workers, its server, any
`Block.load`): importing this must not import `evolink.spend` (and, through it, the campaign
model). `evolink.spend` computes its periods in these zones.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["zone"]


def zone(name: str) -> ZoneInfo:
    """A time zone by IANA name; ValueError names a wrong one."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise ValueError(f"unknown time zone {name!r} (use an IANA name such as 'UTC')") from error
