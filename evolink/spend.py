"""Spend across runs: what storage says EvoLink billed, summed per period, and the spend cap.

Storage holds the source of truth about money: what EvoLink billed each task, as the runs read
it. This module adds it up — by kind of job, campaign, product, deployment, month, stage and
quality — with the drift between estimate and bill and the count of bills nobody could read.
Prefect-free: reading storage, asking EvoLink and publishing are the caller's
(`prefect_evolink.tasks.spend`), and so is laying a report out as CSV, markdown or text
(`prefect_evolink.tasks.spend_report`).

**Where each paid job comes from, counted once per EvoLink task id** (a task is billed once,
however many runs reattached to it or reused its result):

1. The campaign manifests (`<campaign>/manifest.json`): every cost row, as the run (or
   `prefect-evolink report`) booked it — billed, or an unknown bill counted at its estimate. A
   campaign's totals here are therefore its manifest's totals.
2. The job records (`_jobs/<job_key>/`) of every task no manifest lists: ad-hoc jobs
   (`adhoc/<name>`), product jobs (`product/<id>`), and campaign jobs an older version of a brief
   paid for. `result.json` carries the bill; `bill.json` the bill of a job that ended without a
   result record (failed or cancelled at EvoLink — not charged unless its body says so — or
   completed but not all stored); `submit.json` alone means the bill is unknown and the job is
   counted at its estimate, unless EvoLink was asked (`TaskReading`). A submit-only job of a
   campaign whose finished manifest was written after it is the run's own business: the run
   booked every job it paid for, so one without a row was not charged.

Where a manifest row's bill is unknown and a record (or EvoLink) knows it, the known bill wins.
A job counts in the period in which it was submitted (`SubmitRecord.submitted_at`).

**Which deployment a job came from** is recorded, from now on, in its submit record
(`origin`: flow run id, flow, `<flow>/<deployment>` or null for a run not started from a
deployment). Records written before that say nothing and are reported as `unknown`.

**Simulator jobs are never real spend.** A job made at the bundled simulator (its records say
`simulator`, or — records older than endpoints — its images came from a loopback or private
host: `evolink.endpoint.made_on_simulator`; a manifest row carries the flag itself, and one
written before rows did takes its job record's verdict) cost nobody anything: its bill is
synthetic. Such jobs are still counted once each and listed (`SpendJob.simulator`), but summed
apart (`SpendReport.simulator_totals`, its own line and CSV row); the totals, every dimension and
the spend cap count the real jobs only.

**The spend cap** (`EvoLinkSpendCap`) is an estimate check with reservations, because EvoLink
holds no money server-side: before a run sends anything, the period's spend plus the
estimates other running runs reserved plus this run's estimate must fit the cap; then the run
records its own reservation, which counts until the run's job records replace it (the spend
its flow run's jobs recorded is taken off it) and is released when the run ends.

One module per concept, all re-exported here (import the names from here or from their home):
`evolink.spend_jobs` (which jobs were paid, once per task), `evolink.periods` (calendar
periods), `evolink.spend_report` (a period's totals and groups), `evolink.spend_cap` (the check
with reservations); the cap's running total is `evolink.records`'.
"""

from __future__ import annotations

from evolink.layout import REPORTS_PREFIX, RESERVATIONS_DIR, bill_note_key
from evolink.periods import (
    Period,
    PeriodWindow,
    parse_bound,
    period_window,
    previous_period,
    window_label,
)
from evolink.spend_cap import (
    HeldReservation,
    Reservation,
    cap_refusal,
    held_against,
    held_reservations,
)
from evolink.spend_jobs import (
    DIMENSIONS,
    NO_DEPLOYMENT,
    NONE,
    ORIGIN_FIELD,
    SIMULATOR,
    SIMULATOR_LABEL,
    SINGLE_STAGE,
    UNKNOWN,
    BillNote,
    JobFiles,
    Kind,
    RunOrigin,
    Source,
    SpendJob,
    classify,
    collect_jobs,
    origin_of,
    unknown_bills,
)
from evolink.spend_report import (
    SpendGroup,
    SpendReport,
    SpendTotals,
    build_report,
    in_window,
    totals_of,
)
from evolink.timezones import zone

__all__ = [
    "DIMENSIONS",
    "NONE",
    "NO_DEPLOYMENT",
    "ORIGIN_FIELD",
    "REPORTS_PREFIX",
    "RESERVATIONS_DIR",
    "SIMULATOR",
    "SIMULATOR_LABEL",
    "SINGLE_STAGE",
    "UNKNOWN",
    "BillNote",
    "HeldReservation",
    "JobFiles",
    "Kind",
    "Period",
    "PeriodWindow",
    "Reservation",
    "RunOrigin",
    "Source",
    "SpendGroup",
    "SpendJob",
    "SpendReport",
    "SpendTotals",
    "bill_note_key",
    "build_report",
    "cap_refusal",
    "classify",
    "collect_jobs",
    "held_against",
    "held_reservations",
    "in_window",
    "origin_of",
    "parse_bound",
    "period_window",
    "previous_period",
    "totals_of",
    "unknown_bills",
    "window_label",
    "zone",
]
