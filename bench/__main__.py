"""``python -m bench``: triochat against the `websockets` peer, same load, one run.

See docs/performance.md for the method and the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console

from bench.loadgen import Fleet
from bench.report import print_report, to_json
from bench.runner import (
    FD_RESERVE,
    FULL,
    QUICK,
    Bench,
    Results,
    Settings,
    plan_cpus,
    raise_fd_limit,
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Fan-out benchmark: triochat (WebSocket, TCP) vs a `websockets` peer.",
    )
    p.add_argument("--quick", action="store_true", help="a ~1-minute subset (N=200 only)")
    p.add_argument("--json", default="bench-results.json", help="where to write the results")
    p.add_argument("--window", type=float, help="seconds measured per shape")
    p.add_argument("--idle", type=int, help="idle connections to hold (default 10,000)")
    p.add_argument("--workers", type=int, help="load generator processes (default: its CPUs)")
    p.add_argument(
        "--storm-only", action="store_true", help="run only the join storm (TCP, then WS)"
    )
    p.add_argument(
        "--redis-only",
        action="store_true",
        help="run only the Redis section (standalone vs one and two --redis nodes, N=200)",
    )
    p.add_argument("--storm-clients", type=int, help="join storm clients per row (default 2,000)")
    return p


def _settings(args: argparse.Namespace) -> Settings:
    settings = QUICK if args.quick else FULL
    if args.window:
        settings = dataclasses.replace(settings, window=args.window)
    if args.idle is not None:
        settings = dataclasses.replace(settings, idle=args.idle)
    if args.storm_clients:
        settings = dataclasses.replace(settings, storm_clients=args.storm_clients)
    return settings


def _stop_on_sigterm() -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 160)
    err = Console(stderr=True)
    settings = _settings(args)
    began = time.monotonic()
    fd_limit = raise_fd_limit()
    server_cpus, loadgen_cpus = plan_cpus()
    if loadgen_cpus:
        os.sched_setaffinity(0, loadgen_cpus)
    workers = args.workers or (len(loadgen_cpus) if loadgen_cpus else 1)
    if args.storm_only:
        workers = 0  # the storm's clients live in this process
    results = Results(
        settings=settings,
        fd_limit=fd_limit,
        idle_wanted=min(settings.idle, fd_limit - FD_RESERVE),
        server_cpus=server_cpus,
        loadgen_cpus=loadgen_cpus,
        workers=workers,
    )
    _note_limits(results)
    _stop_on_sigterm()

    def progress(text: str) -> None:
        err.print(f"[dim]{time.monotonic() - began:6.1f}s[/] {text}")

    fleet = Fleet(workers, set(loadgen_cpus) if loadgen_cpus else None)
    try:
        with tempfile.TemporaryDirectory(prefix="triochat-bench-") as db_dir:
            bench = Bench(settings, fleet, server_cpus, results, progress, db_dir, loadgen_cpus)
            if args.storm_only:
                bench.storm()
            elif args.redis_only:
                bench.redis_section()
            else:
                bench.run()
    except KeyboardInterrupt:
        err.print("interrupted: every server started has been stopped")
        return 130
    finally:
        fleet.close()
    wall = time.monotonic() - began
    print_report(results, console)
    meta = _meta(wall, args)
    Path(args.json).write_text(json.dumps(to_json(results, meta), indent=2) + "\n")
    console.print(f"wall time {wall:.0f} s; results in {args.json}")
    return 0


def _note_limits(results: Results) -> None:
    if results.idle_wanted < results.settings.idle:
        results.notes.append(
            f"RLIMIT_NOFILE hard limit is {results.fd_limit}: holding {results.idle_wanted} idle "
            f"connections instead of {results.settings.idle} (the server and each load "
            "generator process need one descriptor per connection)"
        )
    if results.server_cpus is None:
        results.notes.append("one CPU only: server and load generator share it (no pinning)")


def _meta(wall: float, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "command": "python -m bench"
        + (" --quick" if args.quick else "")
        + (" --storm-only" if args.storm_only else "")
        + (" --redis-only" if args.redis_only else ""),
        "started_unix": time.time() - wall,
        "wall_s": round(wall, 1),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_at_end": os.getloadavg(),
    }


if __name__ == "__main__":
    raise SystemExit(main())
