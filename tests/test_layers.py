"""The layers of the Prefect-free `evolink` package, read from its source: no import loop, and
the API client never reaches up into the campaign domain.

Every import counts — at module level, inside functions, and under `TYPE_CHECKING` — since
each is an arrow a reader has to follow. The simulator (`evolink.simulator`) is a program of its
own that uses the client's models; it is left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "evolink"

CLIENT = frozenset(
    {
        "evolink.client",
        "evolink.cost",
        "evolink.endpoint",
        "evolink.errors",
        "evolink.files",
        "evolink.images",
        "evolink.models",
        "evolink.polling",
        "evolink.retry",
        "evolink.sizes",
        "evolink.states",
        "evolink.timezones",
        "evolink.urls",
        "evolink.version",
    }
)
"""The API client: requests, answers, errors, retries, polling, sizes and cost; the Files API
client (uploads used as references)."""

DOMAIN = frozenset(
    {
        "evolink.adaptations",
        "evolink.brief",
        "evolink.budget",
        "evolink.callbacks",
        "evolink.campaign",
        "evolink.forms",
        "evolink.jobs",
        "evolink.keys",
        "evolink.layout",
        "evolink.periods",
        "evolink.plans",
        "evolink.previews",
        "evolink.records",
        "evolink.recovery",
        "evolink.running_total",
        "evolink.spend",
        "evolink.spend_cap",
        "evolink.spend_jobs",
        "evolink.spend_report",
        "evolink.uploads",
    }
)
"""What is built on the client: briefs, budgets, campaigns, job records, their storage keys
(keys, layout) and store (records, running_total), their rebuild, callback events, review
thumbnails, spend (jobs, periods, report, cap), the Files API uploads made (uploads)."""


def imports_of(source: str) -> set[str]:
    """The `evolink.*` modules (not the simulator) a module's source imports, anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        found |= {
            name
            for name in names
            if name.startswith("evolink.") and not name.startswith("evolink.simulator")
        }
    return found


def graph() -> dict[str, set[str]]:
    return {
        f"evolink.{path.stem}": imports_of(path.read_text())
        for path in ROOT.glob("*.py")
        if path.stem != "__init__"
    }


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), plus self-imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if target not in edges:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in edges.get(node, ()):
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_walk_sees_every_kind_of_import() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "import evolink.cost\n"
        "from evolink.models import X\n"
        "if TYPE_CHECKING:\n    from evolink.campaign import Y\n"
        "def f():\n    from evolink.jobs import Z\n"
        "from evolink.simulator import S\n"
    )
    assert imports_of(source) == {
        "evolink.cost",
        "evolink.models",
        "evolink.campaign",
        "evolink.jobs",
    }
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_module_is_placed_in_a_layer() -> None:
    assert set(graph()) == CLIENT | DOMAIN


def test_evolink_has_no_import_loop() -> None:
    assert cycles(graph()) == []


@pytest.mark.parametrize("module", sorted(CLIENT))
def test_the_client_does_not_import_the_domain(module: str) -> None:
    assert not graph()[module] & DOMAIN, f"{module} imports {sorted(graph()[module] & DOMAIN)}"
