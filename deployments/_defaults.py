"""Defaults of the task workers that `prefect-evolink serve-products --help` shows.

A module of its own, importing nothing: the command builds its parser from it without importing
Prefect or its task worker (`deployments/task_workers.py` imports both).
"""

from __future__ import annotations

from typing import Final

DEFAULT_LIMIT: Final = 25
"""Products one task worker works on at once (they mostly wait on EvoLink: cheap)."""
