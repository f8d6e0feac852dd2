"""Benchmark 8 (issue #19): what the plugin adds to every Prefect process, and `--help`.

    python3 dev.py run python bench/import_cost.py              # ~30 s (5 runs of each)
    python3 dev.py run python bench/import_cost.py --runs 11

Prefect imports every installed collection's `prefect.collections` entry point whenever a
worker, its server or a deployed flow run starts, and on any `Block.load` of any block type
(PrefectHQ/prefect#9571). So the entry point's import cost is paid by every Prefect process on a
machine where the package is installed, whether it uses EvoLink or not.

Method: in the same call, alternating, N fresh interpreters (after one unmeasured warm-up each,
so the disk cache is warm for both) of

1. `import prefect` (the baseline),
2. `import prefect; import <entry point>`, the entry point read from the installed
   distribution's metadata (as Prefect reads it), and
3. `prefect-evolink --help`: the installed console script next to `sys.executable`.

Wall time from `time.perf_counter` around each child; its peak RSS from `os.wait4` (the child's
own `ru_maxrss`, not the largest of all children). The table gives medians, and the goals: the
entry point at most +0.3 s (difference of the two medians) and +10 MiB over `import prefect`,
`--help` at most 1 s. On a busy machine the difference of medians is noisy, so two steadier
figures for the same cost follow: the median of the back-to-back differences, and the entry
point's import timed inside its own child. One more child lists what the entry point imported
beyond `import prefect` (module count, and any of the heavy modules it must not import:
tests/test_light_plugin.py fails on those).

Every child gets the environment of `bench/common.py` (a temporary PREFECT_HOME, analytics off).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from importlib.metadata import distribution
from pathlib import Path

from common import machine_line, median, print_table

COMMAND = Path(sys.executable).with_name("prefect-evolink")
GOAL_SECONDS = 0.3
GOAL_MIB = 10.0
GOAL_HELP_SECONDS = 1.0
HEAVY = (
    "prefect_evolink.flows",
    "prefect_evolink.tasks",
    "prefect_evolink.deployments",
    "PIL",
    "boto3",
    "botocore",
    "aiobotocore",
    "prefect_aws",
    "prefect.task_worker",
    "fastapi",
    "uvicorn",
)


def entry_point() -> str:
    """The module our `prefect.collections` entry point names, from the installed metadata."""
    [point] = [
        e for e in distribution("prefect-evolink").entry_points if e.group == "prefect.collections"
    ]
    return point.value


def measure(argv: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MiB) and stdout of one child process."""
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(argv, stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)  # this child's own rusage
        elapsed = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            stderr.seek(0)
            raise SystemExit(f"{argv} failed ({process.returncode}):\n{stderr.read().decode()}")
        stdout.seek(0)
        return elapsed, usage.ru_maxrss / 1024, stdout.read().decode()  # ru_maxrss: KiB


def imported_beyond_prefect(module: str) -> tuple[int, list[str]]:
    """How many modules importing `module` adds to `import prefect`, and which of `HEAVY`."""
    script = (
        "import json, sys\n"
        "import prefect\n"
        "before = set(sys.modules)\n"
        f"import {module}\n"
        f"heavy = {HEAVY!r}\n"
        "print(json.dumps([len(set(sys.modules) - before), [h for h in heavy\n"
        "    if any(m == h or m.startswith(h + '.') for m in sys.modules)]]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    count, heavy = json.loads(out.strip().splitlines()[-1])
    return count, heavy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh interpreters of each kind")
    parser.add_argument(
        "--module", default=None, help="measure this module instead of the installed entry point"
    )
    args = parser.parse_args()
    module = args.module or entry_point()
    timed = (  # `import prefect, <module>`, timing each import from inside
        "import time\n"
        "started = time.perf_counter()\n"
        "import prefect\n"
        "between = time.perf_counter()\n"
        f"import {module}\n"
        "print(time.perf_counter() - between)\n"
    )
    variants = {
        "import prefect": [sys.executable, "-c", "import prefect"],
        f"import prefect, {module}": [sys.executable, "-c", timed],
        "prefect-evolink --help": [str(COMMAND), "--help"],
    }
    print(machine_line())
    print(f"entry point: {module}; {args.runs} runs of each, alternating, after one warm-up")
    for argv in variants.values():  # warm-up: disk cache, .pyc files, PREFECT_HOME
        measure(argv)
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    mib: dict[str, list[float]] = {name: [] for name in variants}
    inside: list[float] = []  # the entry point's import, timed in its child
    base, ours, help_ = variants
    for _ in range(args.runs):
        for name, argv in variants.items():
            wall, rss, out = measure(argv)
            seconds[name].append(wall)
            mib[name].append(rss)
            if name == ours:
                inside.append(float(out.split()[-1]))
    rows = [
        [
            name,
            f"{median(seconds[name]):.3f}",
            f"{min(seconds[name]):.3f}–{max(seconds[name]):.3f}",
            f"{median(mib[name]):.1f}",
        ]
        for name in variants
    ]
    print_table(["child", "wall s (median)", "wall s (range)", "peak RSS MiB (median)"], rows)

    added_s = median(seconds[ours]) - median(seconds[base])
    paired = median([o - b for o, b in zip(seconds[ours], seconds[base], strict=True)])
    added_mib = median(mib[ours]) - median(mib[base])
    help_s = median(seconds[help_])
    count, heavy = imported_beyond_prefect(module)
    print()
    print_table(
        ["goal", "measured", "met?"],
        [
            [
                f"entry point ≤ +{GOAL_SECONDS} s",
                f"{added_s:+.3f} s",
                "yes" if added_s <= GOAL_SECONDS else "no",
            ],
            [
                f"entry point ≤ +{GOAL_MIB:.0f} MiB",
                f"{added_mib:+.1f} MiB",
                "yes" if added_mib <= GOAL_MIB else "no",
            ],
            [
                f"`prefect-evolink --help` ≤ {GOAL_HELP_SECONDS:.0f} s",
                f"{help_s:.3f} s",
                "yes" if help_s <= GOAL_HELP_SECONDS else "no",
            ],
            [
                "heavy modules imported by the entry point",
                ", ".join(heavy) or "none",
                "yes" if not heavy else "no",
            ],
        ],
    )
    print(f"modules the entry point imports beyond `import prefect`: {count}")
    print(
        f"the same added time two more ways: median of the {args.runs} back-to-back differences "
        f"{paired:+.3f} s; `import {module}` timed inside its child (after `import prefect`) "
        f"{median(inside):.3f} s (range {min(inside):.3f}–{max(inside):.3f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
