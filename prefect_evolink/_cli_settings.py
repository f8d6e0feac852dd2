"""The Prefect settings the `prefect-evolink` command defaults, in one place.

Prefect reads its settings from the environment once, when `prefect` is first imported, and keeps
them for the life of the process: a variable set after that import is in `os.environ` but not in
`prefect.settings.get_current_settings()`. So `prefect_evolink/cli.py` adds the missing ones to
the environment before any import that can import Prefect, and this module imports only the
standard library. The temporary API server Prefect starts in a subprocess inherits the
environment, so the server settings below reach it too.

Each value is only a default: a variable already set in the environment wins. (Environment
variables outrank Prefect profiles and `prefect.toml`, so to change one of these for the command,
set it in the environment.) Only the command applies them; a user's own flows that import
`prefect_evolink` keep their Prefect settings as they are.

`stale_settings()` is the guard: once Prefect is imported, every Prefect setting defaulted here
must have the value the environment gives it (tests/test_cold_start.py checks it in a fresh
interpreter).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

CLI_DEFAULTS: Final[dict[str, str]] = {
    # Without PREFECT_API_URL, Prefect starts a temporary API server in a subprocess and gives it
    # this long to answer. On a fresh PREFECT_HOME the server first creates and migrates its
    # SQLite database and registers the block types. On a 2-core machine with a warm disk cache
    # that took 8 s idle, 12 s with both cores busy and 50-57 s with three CPU-bound processes
    # per core; a machine that has just booted also reads every module from disk. Prefect's
    # default of 20 s ran out ("Timed out while attempting to connect to ephemeral Prefect API
    # server"). The wait ends as soon as the server answers, so a generous limit costs nothing.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    # The temporary server's telemetry heartbeat (an HTTPS POST to sens-o-matic.prefect.io every
    # 10 minutes, and a row in its database) and, with no PREFECT_API_URL, the SDK's usage events,
    # which ask this setting. The machine may have no internet, and the command has no business
    # reporting on it.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # The SDK's own opt-out (not a Prefect setting: Prefect reads it from the environment, on
    # import and before each event). Without it, Prefect's first import in an interactive
    # terminal prints a "Prefect collects anonymous usage data" notice into the command's output
    # even with the server analytics off, and with PREFECT_API_URL set the SDK asks that server
    # whether to send usage events to Amplitude.
    "DO_NOT_TRACK": "1",
}


def missing_cli_defaults(environ: Mapping[str, str]) -> dict[str, str]:
    """The ones of `CLI_DEFAULTS` that `environ` does not set: what the command adds to it.

    `prefect_evolink/cli.py` runs `os.environ.update(missing_cli_defaults(os.environ))` before any
    import that can import Prefect (see the module's docstring).
    """
    return {name: value for name, value in CLI_DEFAULTS.items() if name not in environ}


def stale_settings() -> dict[str, tuple[Any, Any]]:
    """The Prefect settings of `CLI_DEFAULTS` whose effective value differs from the one the
    environment gives them now, as {name: (effective, from the environment)}; empty when
    the defaults were in the environment before Prefect was imported. Imports Prefect."""
    from prefect import settings

    from_environment = settings.Settings()  # read afresh: environment, profile, defaults
    stale: dict[str, tuple[Any, Any]] = {}
    for name in CLI_DEFAULTS:
        if not name.startswith("PREFECT_"):
            continue
        setting = getattr(settings, name)
        effective, wanted = setting.value(), setting.value_from(from_environment)
        if effective != wanted:
            stale[name] = (effective, wanted)
    return stale
