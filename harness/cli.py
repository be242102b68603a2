"""``harness``: the command line. The exit status is the verdict.

0: every check passed. 1: a check failed. 2: bad usage, or the server could
not be reached (one line on stderr, never a traceback). 130 (SIGINT, Ctrl-C)
or 143 (SIGTERM): interrupted; the report of what finished is still printed
and written.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from functools import partial

import trio
from rich.console import Console

from harness.compare import compare_main
from harness.fleet import Unreachable
from harness.html import html_problem, write_html
from harness.model import EXIT_SIGNAL_BASE, EXIT_USAGE, Report
from harness.options import MIN_CLIENTS, SCENARIOS, Options
from harness.registry import SHARDED
from harness.report import Display, interruption_line, render, write_json
from harness.runner import run_harness
from harness.workers import default_workers
from triochat import argtypes
from triochat.client import parse_url, tls_for
from triochat.errors import ConnectError

FDS_PER_CLIENT_OWN = 2
"""An in-process server holds both ends of every connection."""
FDS_SPARE = 128
"""Listeners, pushers, churn workers, stdio, and slack."""
WIDE = 160
"""Columns for the report when stdout is not a terminal (a log file reads better wide)."""
STOP_ON = (signal.SIGINT, signal.SIGTERM)
"""Signals that stop a run: the report of what finished is still given."""
MIN_SETTLE = 1.0
"""Below a second, ordinary delivery latency would fail the checks: nothing left to prove."""
MIN_RATE = 0.1
"""Slower than a message per 10 s only stretches a run (and far slower overflows its clock)."""
DEFAULT_TRANSPORT = "ws"
SERVER_LOGGER = "triochat.server"
"""The in-process server's records: shown as its own lines, not as the harness's."""


class ServerLines(logging.Handler):
    """The in-process server's records as ``server: LEVEL: message`` lines on stderr.

    ``sys.stderr`` is looked up for each record, so that while the progress bar
    runs (it stands in for stderr) a line is printed above the bar, not through it.
    """

    def emit(self, record: logging.LogRecord) -> None:
        print(f"server: {record.levelname.lower()}: {self.format(record)}", file=sys.stderr)


@contextmanager
def server_logs_shown(verbose: bool) -> Iterator[None]:
    """Errors of the in-process server always; its warnings only with ``--verbose``:
    they are mostly the refusals that ``abuse`` provokes on purpose."""
    logger = logging.getLogger(SERVER_LOGGER)
    handlers, propagate, level = logger.handlers[:], logger.propagate, logger.level
    logger.handlers[:] = [ServerLines()]
    logger.propagate = False
    logger.setLevel(logging.WARNING if verbose else logging.ERROR)
    try:
        yield
    finally:
        logger.handlers[:] = handlers
        logger.propagate = propagate
        logger.setLevel(level)


def build_parser() -> argparse.ArgumentParser:
    p = argtypes.Parser(
        prog="harness",
        description="Load and fault harness for triochat servers: proves broadcast, disconnect,"
        " broken-pipe, slow-reader, flood, bad-input, churn, resume and security handling, and"
        " measures"
        " latency."
        " Exit status: 0 all checks passed, 1 a check failed, 2 bad usage or unreachable,"
        " 130 interrupted by Ctrl-C (143 by SIGTERM): the report of the scenarios that"
        " finished is still printed and written.",
    )
    p.add_argument(
        "--clients",
        type=argtypes.positive_int,
        default=50,
        help="simulated clients (50); disconnect, slow_reader, flood, bad_input and resume need"
        " 3 or more, broken_pipe 5, churn 2",
    )
    p.add_argument(
        "--messages",
        type=argtypes.positive_int,
        help="messages each client sends in broadcast (auto)",
    )
    p.add_argument(
        "--rate",
        type=argtypes.number_at_least(MIN_RATE),
        help=f"messages per second offered by all senders, {MIN_RATE:g} or more (auto)",
    )
    p.add_argument(
        "--duration",
        type=argtypes.positive,
        help="seconds of load: broadcast sends at --rate for this long (unless --messages is"
        " given), churn churns this long (default: broadcast's message count, 3 s of churn)",
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
        help="ws://, wss://, tcp:// or tls://HOST:PORT of a running server (repeatable: the"
        " listeners of one server, or of nodes sharing one Redis; clients are spread evenly);"
        " default: start one in-process",
    )
    p.add_argument(
        "--cafile",
        metavar="PEM",
        help="CA certificate to trust for wss:// and tls:// URLs (default: the system's CAs)",
    )
    p.add_argument(
        "--transport",
        choices=("ws", "tcp"),
        help=f"in-process server's transport ({DEFAULT_TRANSPORT}); not with --url",
    )
    p.add_argument(
        "--workers",
        type=argtypes.positive_int,
        default=default_workers(),
        help=f"processes the clients of {', '.join(s for s in SCENARIOS if s in SHARDED)}"
        f" are spread over (the number of cores: {default_workers()}); 1 runs them in the"
        " harness's own process",
    )
    p.add_argument("--json", metavar="PATH", help="write a machine-readable report to PATH")
    p.add_argument(
        "--html",
        metavar="PATH",
        help="write a self-contained HTML page (verdicts, checks, latency plots) to PATH",
    )
    p.add_argument(
        "--seed",
        type=int,
        help="seed for the scenarios' random choices, any whole number (default: a fresh one,"
        " reported so the run can be replayed)",
    )
    p.add_argument(
        "--evict-within",
        type=argtypes.positive,
        default=15.0,
        help="seconds a stalled reader may take to be evicted (15)",
    )
    p.add_argument(
        "--settle",
        type=argtypes.number_at_least(MIN_SETTLE),
        default=10.0,
        help="seconds to wait for deliveries after the last scheduled send, at least;"
        f" {MIN_SETTLE:g} or more (10)",
    )
    p.add_argument(
        "--password-env",
        metavar="VAR",
        help="the security scenario registers its nick with the password in environment"
        " variable VAR (default: a fresh random one)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="list every check with its criterion and every figure (the JSON always has them)",
    )
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, with the combinations argparse cannot check refused as usage errors."""
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = _combination_problem(args)
    if problem:
        parser.error(problem)
    args.transport = args.transport or DEFAULT_TRANSPORT
    return args


def _combination_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with flags that are each fine alone (None: nothing)."""
    if args.url and args.transport:
        return "argument --transport: not with --url (it sets the in-process server's transport)"
    if args.password_env is not None and not os.environ.get(args.password_env):
        return f"argument --password-env: environment variable {args.password_env} is not set"
    for name in args.scenario or SCENARIOS:
        if args.clients < MIN_CLIENTS[name]:
            return (
                f"argument --clients: {args.clients} is too few for scenario {name}"
                f" (it needs {MIN_CLIENTS[name]} or more; choose scenarios with --scenario)"
            )
    return None


def options_from(args: argparse.Namespace) -> Options:
    return Options(
        clients=args.clients,
        messages=args.messages,
        rate=args.rate,
        duration=args.duration,
        scenarios=tuple(dict.fromkeys(args.scenario)) if args.scenario else SCENARIOS,
        urls=tuple(args.url or ()),
        cafile=args.cafile,
        transport=args.transport,
        json_path=args.json,
        html_path=args.html,
        workers=args.workers,
        seed=args.seed,
        evict_within=args.evict_within,
        settle=args.settle,
        password=os.environ.get(args.password_env) if args.password_env else None,
        quiet=args.quiet,
        verbose=args.verbose,
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
            tls_for(parse_url(url), options.cafile)
        except ConnectError as exc:
            return str(exc)
    if options.json_path:
        problem = _path_problem("--json", options.json_path)
        if problem:
            return problem
    if options.html_path:
        return _path_problem("--html", options.html_path) or html_problem()
    return None


def _path_problem(flag: str, path: str) -> str | None:
    """Refuse now a report path that could only fail once the run is over."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"{flag} {path}: no such directory {folder}"
    if os.path.isdir(path):
        return f"{flag} {path}: is a directory (give a file name)"
    if not os.access(folder, os.W_OK):
        return f"{flag} {path}: cannot write in {folder}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    if arguments[:1] == ["compare"]:
        return compare_main(arguments[1:])
    options = options_from(parse_args(arguments))
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
        # Only outside the run's signal receiver: before it opens or after it closes.
        print("harness: interrupted (no report)", file=sys.stderr)
        return EXIT_SIGNAL_BASE + signal.SIGINT
    report.notes[:0] = notes
    render(console, report, verbose=options.verbose)
    if options.json_path:
        write_json(options.json_path, report)
    if options.html_path:
        write_html(options.html_path, report)
    if report.interrupted is not None:
        print(f"harness: {interruption_line(report)}", file=sys.stderr)
    return report.exit_code


def _run(options: Options, console: Console) -> Report:
    run = partial(run_harness, stop_on=STOP_ON)
    with Display(console, options.quiet) as display, server_logs_shown(options.verbose):
        return trio.run(run, options, display.update, display.scenario_done)
