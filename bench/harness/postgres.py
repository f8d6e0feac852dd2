"""A throwaway PostgreSQL cluster on loopback, for the tests and the benchmarks (no pytest here).

PostgreSQL 15 is on this machine kind under /usr/lib/postgresql/<version>/bin; where it is
missing, `find_postgres(install=True)` installs Debian's package (as root, with apt-get).
`initdb` refuses to run as root, so as root the cluster is created and run as the `postgres`
user, in a directory handed to it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return found[-1].parent if found else None


def find_postgres(*, install: bool = True) -> Path | None:
    """The bin directory of the newest installed PostgreSQL; installed first when missing and
    `install` (needs root and apt-get). None when there is none."""
    if (found := _pg_bin()) is not None:
        return found
    if install and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"],
            env=env,
            capture_output=True,
            timeout=600,
            check=False,
        )
        return _pg_bin()
    return None


@dataclass
class Postgres:
    """One cluster: `start()` runs initdb and pg_ctl; `stop()` stops it immediately."""

    bin: Path
    dir: Path
    port: int

    def _as_owner(self, *args: str) -> list[str]:
        command = [str(self.bin / args[0]), *args[1:]]
        return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command

    def start(self) -> None:
        if os.geteuid() == 0:  # initdb refuses root
            shutil.chown(self.dir, "postgres")
        data = self.dir / "data"
        subprocess.run(
            self._as_owner("initdb", "-D", str(data), "-A", "trust", "-U", "postgres"),
            check=True,
            capture_output=True,
            timeout=120,
        )
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        options += " -c fsync=off -c synchronous_commit=off -c max_connections=200"
        subprocess.run(
            self._as_owner(
                "pg_ctl", "-D", str(data), "-o", options, "-l", str(self.log), "-w", "start"
            ),
            check=True,
            capture_output=True,
            timeout=60,
        )

    @property
    def log(self) -> Path:
        return self.dir / "postgres.log"

    @property
    def pid(self) -> int:
        """The postmaster's pid (its backends are its children)."""
        return int((self.dir / "data" / "postmaster.pid").read_text().split()[0])

    def stop(self) -> None:
        subprocess.run(
            self._as_owner("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop"),
            capture_output=True,
            timeout=60,
            check=False,
        )

    def running(self) -> bool:
        return (self.dir / "data" / "postmaster.pid").exists()

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"
