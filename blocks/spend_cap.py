"""`EvoLinkSpendCap`: the most a calendar period's EvoLink jobs may cost, as estimated up front."""

from __future__ import annotations

from decimal import Decimal
from typing import ClassVar, Literal

from prefect.blocks.core import Block
from pydantic import Field, field_validator

from evolink.timezones import zone
from prefect_evolink.blocks._meta import docs_page, logo_url


class EvoLinkSpendCap(Block):
    """A spend cap per calendar period for the campaign, product and ad-hoc flows.

    An estimate check with reservations, since EvoLink holds no money server-side: before a run
    sends anything, what storage says the period already cost (the campaign manifests and the
    job records: see `prefect-evolink spend`), plus the estimates other running runs reserved,
    plus this run's own estimate must fit `limit_usd`; otherwise the run fails with
    `SpendCapExceededError` and nothing is sent. A run that passes records its estimate as a
    reservation, which counts until its job records replace it and is released when it ends.
    The check and the reservation happen under the global concurrency limit
    `evolink-spend-cap` (one slot, created when missing), so two runs starting at once cannot
    both pass a cap only one of them fits. The runs must share one storage block: the cap sums
    the storage of the run that checks it.

    Attributes:
        limit_usd: Most USD the period's jobs may cost, bills and estimates together.
        period: The calendar period the cap is for: month, week (Monday to Sunday) or day.
        timezone: IANA time zone in which periods begin, e.g. 'Europe/Berlin'.
        reservation_hours: Hours after which the reservation of a run that never released it
            (a killed run) stops counting.

    Example:
        Load a saved block in a flow:
        ```python
        from prefect_evolink.blocks import EvoLinkSpendCap

        spend_cap = EvoLinkSpendCap.load("BLOCK_NAME")
        ```

        Save one (or create it in the Prefect UI) and pick it in a run's form, or pass it:
        ```python
        from prefect_evolink import run_campaign
        from prefect_evolink.blocks import EvoLinkSpendCap

        EvoLinkSpendCap(limit_usd=50, period="month", timezone="Europe/Berlin").save("monthly")
        run_campaign("briefs/spring-launch.yaml", spend_cap=EvoLinkSpendCap.load("monthly"))
        ```
    """

    _block_type_name: ClassVar[str] = "EvoLink Spend Cap"
    _block_type_slug: ClassVar[str] = "evolink-spend-cap"
    _description: ClassVar[str] = (
        "The most a calendar period's EvoLink jobs may cost: an estimate check with "
        "reservations before anything is sent."
    )
    _logo_url = logo_url("evolink-spend-cap")  # type: ignore[assignment]
    _documentation_url = docs_page("spend/")  # type: ignore[assignment]

    @classmethod
    def __dispatch_key__(cls) -> str | None:
        """The slug, without building the schema (see `AssetStorage.__dispatch_key__`)."""
        return cls.get_block_type_slug()

    limit_usd: Decimal = Field(
        gt=0, description="Most USD the period's jobs may cost, bills and estimates together."
    )
    period: Literal["month", "week", "day"] = Field(
        default="month",
        description="The calendar period the cap is for: month, week (Monday to Sunday) or day.",
    )
    timezone: str = Field(
        default="UTC", description="IANA time zone in which periods begin, e.g. 'Europe/Berlin'."
    )
    reservation_hours: float = Field(
        default=48.0,
        gt=0,
        description="Hours after which the reservation of a run that never released it "
        "(a killed run) stops counting.",
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        zone(value)
        return value
