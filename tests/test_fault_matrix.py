"""Fault matrix (issue #5): 'never pays twice', 'never loses a finished image', 'billed = reported'
as figures, one row per fault. Rows and measurements live in `bench/harness/fault_matrix.py`,
shared with `bench/fault_matrix.py` (which prints the README table).

The rows run side by side (each with its own simulator, blocks and storage) in one module
fixture, for the rows selected in this session only; each row's test then checks its figures.
For speed the suite runs two of the example's four assets (`QUICK_ASSETS`, the two the task
faults aim at); the bench runs all four.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.harness.fault_matrix import (
    QUICK_ASSETS,
    SCENARIO_IDS,
    Result,
    by_id,
    check,
    markdown_table,
    run_matrix,
)

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _selected_rows(session: pytest.Session) -> list[str]:
    """The row ids this session will run (all of them when the table test is selected)."""
    wanted: set[str] = set()
    for item in session.items:
        if item.module is None or item.module.__name__ != __name__:
            continue
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "row" in callspec.params:
            wanted.add(callspec.params["row"])
        elif item.name == "test_fault_matrix_table":
            wanted.update(SCENARIO_IDS)
    return [row for row in SCENARIO_IDS if row in wanted]


@pytest.fixture(scope="module")
def matrix(
    request: pytest.FixtureRequest,
    prefect_harness: None,
    s3_server: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Result | BaseException]:
    workdir: Path = tmp_path_factory.mktemp("fault-matrix")
    return run_matrix(
        [by_id(row) for row in _selected_rows(request.session)],
        workdir,
        s3_endpoint=s3_server,
        assets=QUICK_ASSETS,
    )


def _result(matrix: dict[str, Any], row: str) -> Result:
    outcome = matrix.get(row)
    if isinstance(outcome, BaseException):
        raise outcome
    assert isinstance(outcome, Result), f"row {row} did not run"
    return outcome


@pytest.mark.parametrize("row", SCENARIO_IDS)
def test_fault_matrix_row(matrix: dict[str, Any], row: str) -> None:
    result = _result(matrix, row)
    print(f"\n{result.row.markdown()}  [{result.seconds:.1f}s]")
    check(result)


def test_fault_matrix_table(matrix: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    results = [_result(matrix, row) for row in SCENARIO_IDS]
    table = markdown_table(r.row for r in results)
    with capsys.disabled():
        print("\n" + table)
    rows = [r.row for r in results]
    assert len(rows) == len(SCENARIO_IDS)
    assert all(row.duplicates == 0 for row in rows), "a job was paid twice"
    assert all(row.injected > 0 for row in rows), "every row must really inject its fault"
    losses = {r.scenario.id: r.row.images_lost for r in results if r.row.images_lost}
    assert set(losses) <= {"expired-links"}, f"finished images lost: {losses}"
    mismatched = {r.scenario.id for r in results if r.row.billed_usd != r.row.reported_usd}
    assert not mismatched, f"billed ≠ reported in {mismatched}"
