"""Benchmark 3 (issue #5): peak RSS growth while persisting 10 x 20 MB images concurrently.

    python3 dev.py run python bench/persist_memory.py             # ~1-2 min
    python3 dev.py run python bench/persist_memory.py --reps 1 --images 4   # quick

Setup (parent process, not measured):
- one real PNG of ~20 MB: 2600 x 2600 random RGB pixels (incompressible) written by Pillow;
- a file server in its own process (`python -m http.server --bind 127.0.0.1`), which streams the
  file from disk, so the bytes it serves never count in the measured process;
- for S3: `moto_server` (moto's standalone server) in its own process on 127.0.0.1 — an
  in-process `ThreadedMotoServer` would keep every uploaded object in *our* heap;
- a temporary Prefect API (`prefect_test_harness`), shared with the children.

Each measurement runs in a fresh child process (`--child local|s3|control`), so no earlier run
has already grown the heap: the child imports everything and runs one small warm-up flow
(Prefect engine, httpx, boto3 client), takes its baseline RSS, then runs one flow with 10
concurrent `persist_image` tasks (the real Prefect task: stream to a temp file, sniff, sha256,
`storage.put_file`, sidecar) while a thread samples VmRSS every 2 ms. Growth = peak − baseline.
``control`` is the same flow persisting 10 tiny (1 KB) PNGs: the RSS the flow and its 10 task
runs cost whatever the image size.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    ROOT,
    RssSampler,
    machine_line,
    median,
    mib,
    prefect_api,
    print_table,
    rss_bytes,
)

GOAL_MIB = 64
BUCKET = "bench-assets"
S3_KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


# --- parent: fixtures -------------------------------------------------------------------------


def make_png(path: Path, side: int) -> int:
    """A valid RGB PNG of random (incompressible) pixels; returns its size in bytes."""
    from PIL import Image

    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(
        path, format="PNG", compress_level=1
    )
    return path.stat().st_size


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[Any], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def start(command: list[str], port: int) -> subprocess.Popen[Any]:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, process)
    return process


def stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)  # our own child, by pid
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


# --- child: one measurement -------------------------------------------------------------------


def child(kind: str, files_url: str, images: int, s3_endpoint: str | None) -> dict[str, Any]:
    os.environ["PREFECT_API_URL"] = os.environ["BENCH_PREFECT_API_URL"]  # the parent's API
    from prefect import flow
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from prefect_evolink.blocks import AssetStorage, LocalAssetStorage, S3AssetStorage
    from prefect_evolink.blocks.credentials import EvoLinkCredentials
    from prefect_evolink.tasks.persist import persist_image

    credentials = EvoLinkCredentials(api_key="sk-bench-unused", base_url="http://127.0.0.1:9")
    base = Path(tempfile.mkdtemp(prefix="evolink-bench-persist-"))
    storage: AssetStorage
    if kind == "s3":
        storage = S3AssetStorage(
            bucket=BUCKET,
            prefix=f"run-{os.getpid()}",
            endpoint_url=s3_endpoint,
            region_name="us-east-1",
            addressing_style="path",
            **S3_KEYS,
        )
    else:
        storage = LocalAssetStorage(base_dir=str(base / "assets"))
    big = "tiny.png" if kind == "control" else "big.png"

    @flow(name="bench-persist")
    async def persist_many(name: str, count: int, prefix: str) -> list[Any]:
        return await asyncio.gather(
            *(
                persist_image(
                    f"{files_url}/{name}?copy={index}",
                    task_id=f"task-bench-{index}",
                    index=index,
                    dest_prefix=f"{prefix}/{index}",
                    metadata={"bench": "persist_memory"},
                    credentials=credentials,
                    storage=storage,
                )
                for index in range(count)
            )
        )

    try:
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            asyncio.run(persist_many("tiny.png", images, "warmup"))  # imports, engine, clients
            time.sleep(0.5)
            with RssSampler(interval=0.002) as rss:
                started = time.perf_counter()
                stored = asyncio.run(persist_many(big, images, "measured"))
                seconds = time.perf_counter() - started
            after = rss_bytes()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return {
        "kind": kind,
        "baseline": rss.baseline,
        "peak": rss.peak,
        "growth": rss.growth,
        "after": after,
        "samples": rss.samples,
        "seconds": seconds,
        "stored_bytes": sum(image.size_bytes for image in stored),
        "images": len(stored),
    }


# --- parent -------------------------------------------------------------------------------------


def run_child(kind: str, files_url: str, images: int, s3_endpoint: str, api_url: str) -> Any:
    env = {**os.environ, "BENCH_PREFECT_API_URL": api_url}
    command = [sys.executable, __file__, "--child", kind, "--files-url", files_url]
    command += ["--images", str(images), "--s3-endpoint", s3_endpoint]
    result = subprocess.run(
        command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"child {kind} failed:\n{result.stdout}\n{result.stderr[-4000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def parent(args: argparse.Namespace) -> int:
    import boto3

    print(machine_line())
    work = Path(tempfile.mkdtemp(prefix="evolink-bench-files-"))
    servers: list[subprocess.Popen[Any]] = []
    try:
        size = make_png(work / "big.png", args.side)
        make_png(work / "tiny.png", 16)
        print(
            f"image: {args.side}x{args.side} random RGB PNG, {size:,} bytes ({mib(size)} MiB); "
            f"{args.images} concurrent persists per run; {args.reps} fresh child process(es) "
            "per storage"
        )
        files_port, s3_port = free_port(), free_port()
        http_server = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1"]
        servers.append(start([*http_server, "--directory", str(work), str(files_port)], files_port))
        moto = shutil.which("moto_server", path=str(Path(sys.executable).parent))
        if moto is None:
            raise RuntimeError("moto_server is not installed in this environment")
        servers.append(start([moto, "-H", "127.0.0.1", "-p", str(s3_port)], s3_port))
        files_url = f"http://127.0.0.1:{files_port}"
        s3_endpoint = f"http://127.0.0.1:{s3_port}"
        boto3.client(
            "s3", endpoint_url=s3_endpoint, region_name="us-east-1", **S3_KEYS
        ).create_bucket(Bucket=BUCKET)

        results: dict[str, list[dict[str, Any]]] = {"control": [], "local": [], "s3": []}
        with prefect_api() as api_url:
            for rep in range(args.reps):
                for kind in results:
                    result = run_child(kind, files_url, args.images, s3_endpoint, api_url)
                    results[kind].append(result)
                    print(
                        f"  rep {rep + 1} {kind:<8} growth {mib(result['growth'])} MiB "
                        f"(baseline {mib(result['baseline'])}, peak {mib(result['peak'])}, "
                        f"{result['samples']} samples), {result['seconds']:.1f} s, stored "
                        f"{result['stored_bytes']:,} bytes",
                        flush=True,
                    )
    finally:
        for server in servers:
            stop(server)
        shutil.rmtree(work, ignore_errors=True)

    print()
    rows = []
    for kind, runs in results.items():
        growth = median([r["growth"] for r in runs])
        rows.append(
            [
                kind,
                f"{args.images} x {mib(runs[0]['stored_bytes'] / runs[0]['images'])} MiB",
                f"{mib(growth)}",
                " / ".join(mib(r["growth"]) for r in runs),
                f"{mib(median([r['baseline'] for r in runs]))}",
                f"{median([r['seconds'] for r in runs]):.1f}",
                "—" if kind == "control" else ("yes" if growth <= GOAL_MIB * 2**20 else "no"),
            ]
        )
    print_table(
        [
            "storage",
            "images",
            "median peak RSS growth MiB",
            "runs (MiB)",
            "baseline RSS MiB",
            "seconds",
            f"<= {GOAL_MIB} MiB",
        ],
        rows,
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--side", type=int, default=2600, help="PNG edge in pixels")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--child", choices=["local", "s3", "control"], help=argparse.SUPPRESS)
    parser.add_argument("--files-url", help=argparse.SUPPRESS)
    parser.add_argument("--s3-endpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 1 <= args.images <= 50 or not 1 <= args.reps <= 10 or not 16 <= args.side <= 4000:
        parser.error("1..50 images, 1..10 reps, 16..4000 px")
    if args.child:
        result = child(args.child, args.files_url, args.images, args.s3_endpoint)
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    return parent(args)


if __name__ == "__main__":
    raise SystemExit(main())
