"""Retry backoff, server hints, poll pacing, job keys and image sniffing: pure functions."""

from __future__ import annotations

import math
import random
import struct
import zlib
from datetime import UTC, datetime, timedelta

import pytest

from evolink.errors import RateLimitError, ServerError, TaskFailedError
from evolink.images import sniff_image
from evolink.jobs import idempotency_key, job_key
from evolink.models import parse_request
from evolink.polling import PollSchedule
from evolink.retry import RetryPolicy, parse_retry_after, seconds_from_suggestion


def rate_limited(retry_after: float | None, suggestion: str | None = None) -> RateLimitError:
    return RateLimitError(
        "slow down", retry_after=retry_after, status_code=429, fallback_suggestion=suggestion
    )


def test_retry_after_header_forms() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after("1.5") == 1.5
    assert (
        parse_retry_after(
            (now + timedelta(seconds=30)).strftime("%a, %d %b %Y %H:%M:%S GMT"), now=now
        )
        == 30
    )
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    assert parse_retry_after("-5") == 0.0


def test_fallback_suggestion_is_read() -> None:
    assert seconds_from_suggestion("retry after 60 seconds") == 60
    assert seconds_from_suggestion("Please retry after 2.5s") == 2.5
    assert seconds_from_suggestion("try later") is None


def test_server_hint_beats_backoff_and_is_capped() -> None:
    policy = RetryPolicy(max_server_hint=120)
    assert policy.delay(1, rate_limited(7)) == 7
    assert policy.delay(1, rate_limited(None, "retry after 60 seconds")) == 60
    assert policy.delay(1, rate_limited(3600)) == 120


def test_backoff_grows_with_bounded_jitter() -> None:
    policy = RetryPolicy(base_delay=1, max_delay=8, jitter=0.25)
    rng = random.Random(0)
    error = ServerError("boom", status_code=503)
    for attempt, centre in [(1, 1), (2, 2), (3, 4), (4, 8), (6, 8)]:
        delays = [policy.delay(attempt, error, rng) for _ in range(50)]
        assert all(centre * 0.75 <= d <= centre * 1.25 for d in delays)
        assert len(set(delays)) > 1  # jitter really spreads the retries


def test_only_retryable_errors_are_retried() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert policy.should_retry(1, ServerError("x", status_code=500))
    assert not policy.should_retry(3, ServerError("x", status_code=500))
    assert not policy.should_retry(1, TaskFailedError("t", "service_error", None))


def test_poll_pacing_thins_out_then_tightens() -> None:
    schedule = PollSchedule(min_interval=1, max_interval=15)
    assert schedule.next_delay(0, 0, 100) == 15  # far from done: the slowest pace
    assert schedule.next_delay(50, 50, 100) == 15
    assert schedule.next_delay(90, 90, 200) == 5  # predictions disagree: half of 10 s left
    assert schedule.next_delay(99, 99, 200) == 1  # never faster than min_interval
    assert schedule.next_delay(10, 0, None) == 15  # nothing known: slowest pace
    assert schedule.next_delay(5, 0, 20) == 7.5  # only the estimate: half of 15 s left


def test_when_progress_and_estimate_agree_the_next_poll_lands_just_past_the_end() -> None:
    schedule = PollSchedule(min_interval=1, max_interval=15)
    assert schedule.predictions_agree(90, 90, 100)
    assert schedule.next_delay(90, 90, 100) == 10.25
    assert schedule.predictions_agree(9, 50, 20)  # 18 s vs 20 s: within 10 %
    assert not schedule.predictions_agree(8, 50, 20)  # 16 s vs 20 s
    assert schedule.next_delay(50, 50, 100) == 15  # an aim is still capped by max_interval


def test_poll_never_sleeps_past_the_deadline() -> None:
    schedule = PollSchedule(min_interval=1, max_interval=15, deadline_seconds=20)
    assert schedule.next_delay(18, 10, None) == 2
    # a resumed wait: the task is 300 s old, this wait has run 18 s of its 20
    assert schedule.next_delay(300, 10, None, waited=18) == 2


def simulate(job_time: float, estimated_time: float, schedule: PollSchedule) -> tuple[int, float]:
    """Polls and lag for a job with linear progress, starting from the create response."""
    t, polls = 0.0, 0
    progress = 0
    while True:
        t += schedule.next_delay(t, progress, estimated_time)
        polls += 1
        if t >= job_time:
            return polls, t - job_time
        progress = int(100 * t / job_time)


@pytest.mark.parametrize("job_time", [20.0, 60.0, 100.0])
def test_simulated_job_needs_at_most_half_the_polls_of_a_fixed_3s_poll(job_time: float) -> None:
    for estimated_time in (job_time, job_time * 1.05, job_time * 2):  # accurate, close, far off
        polls, lag = simulate(job_time, estimated_time, PollSchedule())
        fixed_polls, _ = simulate(job_time, estimated_time, PollSchedule(3, 3))
        assert fixed_polls == math.ceil(job_time / 3)
        if estimated_time <= job_time * 1.1:
            assert polls <= fixed_polls / 2, (estimated_time, polls)
        assert lag <= 0.1 * job_time, (estimated_time, lag)


def test_job_key_is_stable_and_depends_only_on_the_job() -> None:
    a = parse_request({"prompt": "p", "size": "1:1"})
    b = parse_request({"size": "1:1", "prompt": "p"})
    assert job_key("campaign/x/asset", a) == job_key("campaign/x/asset", b)
    assert job_key("campaign/x/asset", a) != job_key("campaign/x/other", a)
    assert job_key("n", a) != job_key("n", a, attempt=2)
    key = idempotency_key(job_key("n", a))
    assert 16 <= len(key) <= 96 and all(c.isalnum() or c in "._-" for c in key)


def _png(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


def test_sniff_png_jpeg_webp_and_refuse_the_rest() -> None:
    png = sniff_image(_png(1360, 768))
    assert png is not None and (png.content_type, png.width, png.height) == ("image/png", 1360, 768)
    sof = b"\xff\xc0" + struct.pack(">HBHH", 17, 8, 480, 640) + b"\x03" + b"\x00" * 9
    jpeg = sniff_image(
        b"\xff\xd8\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + b"\x00" * 9 + sof
    )
    assert jpeg is not None and (jpeg.content_type, jpeg.width, jpeg.height) == (
        "image/jpeg",
        640,
        480,
    )
    vp8x = (
        b"RIFF"
        + b"\x00" * 4
        + b"WEBPVP8X"
        + b"\x00" * 8
        + (799).to_bytes(3, "little")
        + (599).to_bytes(3, "little")
    )
    webp = sniff_image(vp8x)
    assert webp is not None and (webp.width, webp.height) == (800, 600)
    assert sniff_image(b"<html><body>Access denied</body></html>") is None
    assert sniff_image(b"GIF89a" + b"\x00" * 40) is None


def test_budget_reservations_calibrate_to_bills_above_estimates() -> None:
    import asyncio
    from decimal import Decimal

    from evolink.budget import Budget

    async def scenario() -> list[object]:
        budget = Budget(Decimal("1.00"))
        held = await budget.reserve(Decimal("0.20"))
        assert held == Decimal("0.20")
        await budget.settle(held, Decimal("0.20"), Decimal("0.30"))  # billed 1.5x the estimate
        second = await budget.reserve(Decimal("0.40"))  # held at 0.60 now
        third = await budget.reserve(Decimal("0.20"))  # 0.30 > 0.10 left: refused
        return [budget.calibration, second, third, budget.left_usd]

    assert asyncio.run(scenario()) == [Decimal("1.5"), Decimal("0.600"), None, Decimal("0.100")]


def test_the_create_response_is_the_first_reading_only_while_fresh() -> None:
    from evolink.jobs import SentRequest, SubmitRecord
    from evolink.states import TaskStatus
    from prefect_evolink.tasks.poll import create_reading

    request = parse_request({"prompt": "p", "size": "1:1"})
    submit = SubmitRecord(
        job_key="k",
        namespace="n",
        idempotency_key="evl-k",
        task_id="task-1",
        request=SentRequest.of(request),
        estimate={},
        estimated_time=100,
    )
    schedule = PollSchedule(min_interval=1)
    reading = create_reading(submit, 0.2, schedule)
    assert reading is not None and reading.status is TaskStatus.PENDING
    assert (reading.id, reading.estimated_time) == ("task-1", 100)
    assert create_reading(submit, 1.0, schedule) is None  # a retry or a rerun: ask
    replayed = submit.model_copy(update={"replayed": True})
    assert create_reading(replayed, 0.2, schedule) is None  # the task may be older than we know


def test_cost_rows_of_a_partly_stored_job_add_up_to_its_bill() -> None:
    from datetime import UTC, datetime

    from evolink.campaign import image_cost_rows
    from evolink.jobs import JobRecord, SentRequest, StoredImage

    now = datetime.now(UTC)
    image = StoredImage(
        index=0,
        key="k/image-0.png",
        uri="file:///k/image-0.png",
        sha256="ab" * 32,
        size_bytes=10,
        content_type="image/png",
        width=1024,
        height=1024,
        source_url="https://cdn.example.com/0.png",
    )
    record = JobRecord(
        job_key="k",
        namespace="n",
        task_id="task-1",
        request=SentRequest.of(parse_request({"prompt": "p", "size": "1:1", "n": 4})),
        estimated_usd="0.04",
        estimated_credits="2.72",
        billed_usd="0.04",
        billed_credits="2.72",
        billed_source="usage",
        images=[image],
        submitted_at=now,
        completed_at=now,
    )
    rows = image_cost_rows(record, failed="ResultExpiredError: gone")
    assert [r["billed_usd"] for r in rows] == ["$0.010000", "$0.030000"]
    assert [r["billed_credits"] for r in rows] == ["0.68000", "2.04000"]
    assert rows[1]["stored_at"] == "NOT STORED (paid, 3 image(s)): ResultExpiredError: gone"
    stored_only = image_cost_rows(record)
    assert [r["billed_usd"] for r in stored_only] == ["$0.010000"]  # a stored image's share
