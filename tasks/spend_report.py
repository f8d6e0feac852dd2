"""The spend report as people read it: the CSV and the table rows, the markdown summary and the
plain-text lines of `prefect-evolink spend` and the `spend_report` flow's log.

One concept: laying a `SpendReport` out. The sums come from `evolink.spend`; this module only
writes them down — real spend in the totals and every group, the simulator's jobs (synthetic
bills) on a line or row of their own, never in a total. Stored and published by
`prefect_evolink.tasks.spend` (`store_spend_report`, `publish_spend_report`).
"""

from __future__ import annotations

import csv
import io
from typing import Any, Final

from evolink.cost import usd
from evolink.spend import DIMENSIONS, SIMULATOR, SIMULATOR_LABEL, SpendReport, SpendTotals

CSV_COLUMNS: Final = (
    "dimension",
    "value",
    "jobs",
    "estimated_usd",
    "billed_usd",
    "unknown_bills",
    "unknown_estimated_usd",
    "total_usd",
    "drift_usd",
    "drift_ratio",
)


def table_rows(report: SpendReport) -> list[dict[str, Any]]:
    """The totals and every group, one row each (the CSV and the table artifact): real spend.
    The simulator's jobs, if any, come last in a row of their own (`dimension` = `simulator`,
    `value` = the period), never in the `total` row."""
    first = {"dimension": "total", "value": report.period, **report.totals.model_dump()}
    rows = [first, *(group.model_dump() for group in report.groups)]
    if report.simulator_totals.jobs:
        rows.append(
            {"dimension": SIMULATOR, "value": report.period, **report.simulator_totals.model_dump()}
        )
    return [{column: row.get(column) for column in CSV_COLUMNS} for row in rows]


def report_csv(report: SpendReport) -> str:
    """`_reports/spend/<period>.csv`: `CSV_COLUMNS`, then `table_rows`; a missing value is empty."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in table_rows(report):
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return out.getvalue()


def _drift(totals: SpendTotals) -> str:
    if totals.drift_ratio is None:
        return "no bill known"
    return f"{usd(totals.drift_usd)} ({totals.drift_ratio}× the estimate)"


def _simulator_text(totals: SpendTotals) -> str:
    unknown = f", {totals.unknown_bills} at estimate" if totals.unknown_bills else ""
    return (
        f"{usd(totals.total_usd)} ({totals.billed_credits} credits{unknown}) over "
        f"{totals.jobs} job(s)"
    )


def summary_lines(report: SpendReport) -> list[str]:
    """Plain-text lines for the CLI and the logs. The simulator's jobs get a line of their own,
    labelled, and only when there are any: synthetic bills are never real spend."""
    totals = report.totals
    lines = [
        f"Spend {report.period} ({report.timezone}): {usd(totals.total_usd)} for "
        f"{totals.jobs} paid job(s)",
        f"  billed {usd(totals.billed_usd)} (known bills), estimate was "
        f"{usd(totals.estimated_usd)}; drift {_drift(totals)}",
        f"  unknown bills: {totals.unknown_bills}"
        + (
            f" (counted at their estimates, {usd(totals.unknown_estimated_usd)})"
            if totals.unknown_bills
            else ""
        ),
    ]
    if report.simulator_totals.jobs:
        lines.append(
            f"Simulator ({SIMULATOR_LABEL}): {_simulator_text(report.simulator_totals)} — not "
            "in the totals above or the tables below"
        )
    for dimension in DIMENSIONS:
        groups = report.group(dimension)
        if not groups:
            continue
        lines.append(f"By {dimension}:")
        for value, group in groups.items():
            unknown = f", {group.unknown_bills} unknown" if group.unknown_bills else ""
            lines.append(f"  {value:<36} {usd(group.total_usd):>12}  {group.jobs} job(s){unknown}")
    if report.reserved:
        lines.append(
            f"Reserved by {len(report.reserved)} running run(s): {usd(report.reserved_usd)} "
            "(estimates, not bills)"
        )
    return lines


def report_markdown(report: SpendReport) -> str:
    """The `evolink-spend-summary` artifact: the totals, then one table per dimension."""
    totals = report.totals
    lines = [
        f"# EvoLink spend {report.period}",
        "",
        f"Jobs submitted {report.since or 'from the start'} – {report.until or 'now'} "
        f"({report.timezone}), summed from the campaign manifests and the job records in "
        "storage, each EvoLink task once.",
        "",
        f"- total: **{usd(totals.total_usd)}** for {totals.jobs} paid job(s)",
        f"- billed (known bills): {usd(totals.billed_usd)}; estimated: {usd(totals.estimated_usd)}",
        f"- drift, bill vs estimate: {_drift(totals)}",
        f"- unknown bills: **{totals.unknown_bills}** (counted at their estimates, "
        f"{usd(totals.unknown_estimated_usd)})",
    ]
    if report.simulator_totals.jobs:
        lines.append(
            f"- simulator ({SIMULATOR_LABEL}): {_simulator_text(report.simulator_totals)} — "
            "not in any total or table here"
        )
    if report.reserved:
        lines.append(
            f"- reserved by running runs (estimates): {usd(report.reserved_usd)} — "
            + ", ".join(r.reservation.label for r in report.reserved)
        )
    if report.problems:
        lines.append(f"- unreadable records: {len(report.problems)}")
    for dimension in DIMENSIONS:
        groups = report.group(dimension)
        if not groups:
            continue
        lines += [
            "",
            f"## By {dimension}",
            "",
            "| value | jobs | total | billed | estimated | unknown bills | drift |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {value} | {g.jobs} | {usd(g.total_usd)} | {usd(g.billed_usd)} | "
            f"{usd(g.estimated_usd)} | {g.unknown_bills} | {usd(g.drift_usd)} |"
            for value, g in groups.items()
        ]
    return "\n".join(lines) + "\n"
