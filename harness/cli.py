"""``harness``: the command line. The exit status is the verdict.

0: every check passed. 1: a check failed. 2: bad usage, or the server could
not be reached (one line on stderr, never a traceback).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
from collections.abc import Sequence
from dataclasses import replace

import trio
from rich.console import Console

from harness.fleet import Unreachable
from harness.model import EXIT_USAGE, Report
from harness.options import SCENARIOS, Options
from harness.report import Display, render, write_json
from harness.runner import run_harness
from triochat import argtypes
from triochat.client import parse_url
from triochat.errors import ConnectError
from triochat.server.config import WS_ENGINES

FDS_PER_CLIENT_OWN = 2
"""An in-process server holds both ends of every connection."""
FDS_SPARE = 128
"""Listeners, pushers, churn workers, stdio, and slack."""
WIDE = 160
"""Columns for the report when stdout is not a terminal (a log file reads better wide)."""


def build_parser() -> argparse.ArgumentParser:
    p = argtypes.Parser(
        prog="harness",
        description="Load and fault harness for triochat servers: proves broadcast, disconnect,"
        " broken-pipe, slow-reader, flood, bad-input, churn and resume handling, and measures"
        " latency."
        " Exit status: 0 all checks passed, 1 a check failed, 2 bad usage or unreachable.",
    )
    p.add_argument(
        "--clients", type=argtypes.positive_int, default=50, help="simulated clients (50)"
    )
    p.add_argument(
        "--messages",
        type=argtypes.positive_int,
        help="messages each client sends in broadcast (auto)",
    )
    p.add_argument(
        "--rate", type=argtypes.positive, help="messages per second offered by all senders (auto)"
    )
    p.add_argument(
        "--duration", type=argtypes.positive, default=3.0, help="seconds of connect/leave churn (3)"
    )
    p.add_argument(
        "--scenario",
        action="append",
        choices=SCENARIOS,
        metavar="NAME",
        help=f"run only this scenario (repeatable; default all): {', '.join(SCENARIOS)}",
    )
    p.add_argument(
        "--url",
        action="append",
        help="ws://HOST:PORT or tcp://HOST:PORT of a running server (repeatable; all must be"
        " listeners of one server); default: start one in-process",
    )
    p.add_argument(
        "--transport", choices=("ws", "tcp"), default="ws", help="in-process server's transport"
    )
    p.add_argument(
        "--ws-engine",
        choices=WS_ENGINES,
        default="trio-websocket",
        help="in-process server's WebSocket engine (as triochat serve --ws-engine)",
    )
    p.add_argument("--json", metavar="PATH", help="write a machine-readable report to PATH")
    p.add_argument("--seed", type=int, help="seed for the scenarios' random choices")
    p.add_argument(
        "--evict-within",
        type=argtypes.positive,
        default=15.0,
        help="seconds a stalled reader may take to be evicted (15)",
    )
    p.add_argument(
        "--settle",
        type=argtypes.positive,
        default=10.0,
        help="seconds to wait for deliveries after the last scheduled send, at least (10)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress display")
    return p


def options_from(args: argparse.Namespace) -> Options:
    return Options(
        clients=args.clients,
        messages=args.messages,
        rate=args.rate,
        duration=args.duration,
        scenarios=tuple(dict.fromkeys(args.scenario)) if args.scenario else SCENARIOS,
        urls=tuple(args.url or ()),
        transport=args.transport,
        ws_engine=args.ws_engine,
        json_path=args.json,
        seed=args.seed,
        evict_within=args.evict_within,
        settle=args.settle,
        quiet=args.quiet,
    )


def raise_open_files(options: Options) -> tuple[Options, list[str]]:
    """Lift the soft RLIMIT_NOFILE to the hard limit; cap ``clients`` if even that is short."""
    notes = []
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            notes.append(f"raised the open-files limit from {soft} to {hard}")
            soft = hard
        except (ValueError, OSError) as exc:
            notes.append(f"could not raise the open-files limit ({soft}): {exc}")
    per = FDS_PER_CLIENT_OWN if options.own_server else 1
    most = max((soft - FDS_SPARE) // per, 1) if soft != resource.RLIM_INFINITY else options.clients
    if options.clients > most:
        notes.append(
            f"the open-files limit ({soft}) caps clients at {most} (asked for {options.clients})"
        )
        options = replace(options, clients=most)
    return options, notes


def _usage_problem(options: Options) -> str | None:
    for url in options.urls:
        try:
            parse_url(url)
        except ConnectError as exc:
            return str(exc)
    if options.json_path:
        folder = os.path.dirname(os.path.abspath(options.json_path))
        if not os.path.isdir(folder):
            return f"--json {options.json_path}: no such directory {folder}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = options_from(args)
    problem = _usage_problem(options)
    if problem:
        print(f"harness: {problem}", file=sys.stderr)
        return EXIT_USAGE
    options, notes = raise_open_files(options)
    console = Console()
    if not console.is_terminal:
        console = Console(width=WIDE)
    for note in notes:
        console.print(f"note: {note}")
    try:
        report = _run(options, console)
    except Unreachable as exc:
        print(f"harness: cannot reach the server: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("harness: interrupted", file=sys.stderr)
        return EXIT_USAGE
    report.notes[:0] = notes
    render(console, report)
    if options.json_path:
        write_json(options.json_path, report)
    return report.exit_code


def _run(options: Options, console: Console) -> Report:
    with Display(console, options.quiet) as display:
        return trio.run(run_harness, options, display.update, display.scenario_done)
