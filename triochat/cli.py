"""``triochat``: the command line. Failures a person can cause are one line, never a traceback."""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import logging
import signal
import sys
from collections.abc import Sequence
from functools import partial

import trio

from triochat import argtypes
from triochat.account_cli import add_account_parser
from triochat.errors import CertificateError, ListenError, RedisError, StoreError
from triochat.logs import FORMATS, LEVELS
from triochat.logs import configure as configure_logs
from triochat.rooms_cli import add_rooms_parser
from triochat.server import ServerConfig, serve
from triochat.server.config import MIN_MAX_LINE
from triochat.server.limits import raise_open_files_limit
from triochat.server.redis_url import parse_redis_url
from triochat.server.store import default_db_path
from triochat.settings import CONFIG_FLAG, Settings, SettingsError, describe, layered
from tui.cli import add_arguments as add_tui_arguments

DEFAULTS = ServerConfig()
GC_THRESHOLD = 50_000


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        CONFIG_FLAG,
        metavar="FILE",
        help="a TOML file of settings: every flag's long name with _ for - (tcp_port = 5001);"
        " TRIOCHAT_* environment variables override it, flags override both",
    )
    p.add_argument("--host", default=DEFAULTS.host, help="address to listen on")
    p.add_argument(
        "--port", type=argtypes.port, default=DEFAULTS.port, help="WebSocket port (0: any free)"
    )
    p.add_argument(
        "--tcp-port", type=argtypes.port, default=DEFAULTS.tcp_port, help="TCP port (0: any free)"
    )
    p.add_argument("--no-tcp", action="store_true", help="do not open the TCP listener")
    p.add_argument(
        "--certfile",
        metavar="PEM",
        help="certificate chain (PEM): both listeners speak TLS (wss://, tls://); needs --keyfile",
    )
    p.add_argument("--keyfile", metavar="PEM", help="private key (PEM) of --certfile")
    p.add_argument(
        "--rate-limit",
        type=argtypes.non_negative,
        default=DEFAULTS.rate_limit,
        help="events per second per client (0: no limit)",
    )
    p.add_argument(
        "--burst",
        type=argtypes.positive_int,
        default=DEFAULTS.burst,
        help="events a client may send at once before the rate applies",
    )
    p.add_argument(
        "--handshake-timeout",
        type=argtypes.positive,
        default=DEFAULTS.handshake_timeout,
        help="seconds to complete the WebSocket upgrade (or, on TCP with TLS, the TLS"
        " handshake; a TLS handshake counts towards the upgrade), and again to send hello",
    )
    p.add_argument(
        "--keepalive-interval",
        type=argtypes.non_negative,
        default=DEFAULTS.keepalive_interval,
        help="seconds of client silence before the server checks it is alive (0: never)",
    )
    p.add_argument(
        "--keepalive-timeout",
        type=argtypes.positive,
        default=DEFAULTS.keepalive_timeout,
        help="seconds a client has to answer before it is dropped",
    )
    p.add_argument(
        "--drain-timeout",
        type=argtypes.positive,
        default=DEFAULTS.drain_timeout,
        help="seconds to say goodbye to every client on shutdown",
    )
    p.add_argument(
        "--max-line",
        type=argtypes.at_least(MIN_MAX_LINE),
        default=DEFAULTS.max_line,
        help="longest accepted line in bytes",
    )
    p.add_argument(
        "--message-timeout",
        type=argtypes.positive,
        default=DEFAULTS.message_timeout,
        help="seconds a line or WebSocket message may take from its first byte to its last",
    )
    p.add_argument(
        "--max-rooms",
        type=argtypes.positive_int,
        default=DEFAULTS.max_rooms,
        help="rooms the server holds at once (too_many_rooms beyond)",
    )
    p.add_argument(
        "--max-rooms-per-client",
        type=argtypes.positive_int,
        default=DEFAULTS.max_rooms_per_client,
        help="rooms one client may be in at once (too_many_rooms beyond)",
    )
    p.add_argument(
        "--room-history-bytes",
        type=argtypes.positive_int,
        default=DEFAULTS.room_history_bytes,
        help="bytes of history one room keeps in memory (oldest events go first)",
    )
    p.add_argument(
        "--history-bytes",
        type=argtypes.positive_int,
        default=DEFAULTS.history_bytes,
        help="bytes of history all rooms keep in memory together (empty rooms are freed first)",
    )
    p.add_argument(
        "--max-connections",
        type=argtypes.positive_int,
        default=DEFAULTS.max_connections,
        help="connections served at once (default: what the open-files limit allows,"
        " less a reserve for refusing politely)",
    )
    p.add_argument(
        "--max-connections-per-ip",
        type=argtypes.positive_int,
        default=DEFAULTS.max_connections_per_ip,
        help="connections one address may hold at once",
    )
    p.add_argument(
        "--connect-rate",
        type=argtypes.positive,
        default=DEFAULTS.connect_rate,
        help="new connections per second one address may open",
    )
    p.add_argument(
        "--connect-burst",
        type=argtypes.positive_int,
        default=DEFAULTS.connect_burst,
        help="new connections one address may open at once before --connect-rate applies",
    )
    p.add_argument(
        "--join-rate",
        type=argtypes.positive,
        default=DEFAULTS.join_rate,
        help="room joins per second one address may make, all its connections together",
    )
    p.add_argument(
        "--join-burst",
        type=argtypes.positive_int,
        default=DEFAULTS.join_burst,
        help="room joins one address may make at once before --join-rate applies",
    )
    p.add_argument(
        "--limit-loopback",
        action="store_true",
        help="apply the per-address limits to loopback clients too",
    )
    p.add_argument(
        "--trusted-proxy",
        action="append",
        type=argtypes.network,
        default=[],
        metavar="ADDRESS",
        help="a proxy (address or network) whose X-Forwarded-For names the client (repeatable)",
    )
    p.add_argument(
        "--allowed-origin",
        action="append",
        type=argtypes.origin,
        default=[],
        metavar="ORIGIN",
        help="a browser origin (scheme://host[:port], or * for all) that may open a WebSocket"
        " besides the Host's own (repeatable)",
    )
    p.add_argument(
        "--outbox-events",
        type=argtypes.positive_int,
        default=DEFAULTS.outbox_events,
        help="events queued for one client before it is evicted as too slow",
    )
    p.add_argument(
        "--outbox-bytes",
        type=argtypes.positive_int,
        default=DEFAULTS.outbox_bytes,
        help="bytes queued for one client before it is evicted as too slow",
    )
    p.add_argument(
        "--history",
        type=argtypes.non_negative_int,
        default=DEFAULTS.history_limit,
        help="events of a room's past sent on join",
    )
    p.add_argument(
        "--retention",
        type=argtypes.positive_int,
        default=DEFAULTS.retention,
        help="events kept per room",
    )
    p.add_argument(
        "--db",
        type=argtypes.file_in_existing_folder,
        help=f"SQLite file that keeps room history across restarts (default: {default_db_path()})",
    )
    p.add_argument(
        "--no-history",
        action="store_true",
        help="keep history in memory only (lost on restart)",
    )
    p.add_argument(
        "--metrics-port",
        type=argtypes.port,
        help="serve Prometheus metrics at http://METRICS-HOST:PORT/metrics (0: any free port)",
    )
    p.add_argument(
        "--metrics-host",
        default=DEFAULTS.metrics_host,
        help="address of the metrics listener",
    )
    _redis_arguments(p)
    _auth_arguments(p)
    p.add_argument(
        "--log-level",
        default="info",
        choices=LEVELS,
        help="triochat's log level on stderr (libraries log at warning, or debug with debug)",
    )
    p.add_argument(
        "--log-format",
        default="text",
        choices=FORMATS,
        help="text lines, or one JSON object per line with stable field names",
    )


def _redis_arguments(p: argparse.ArgumentParser) -> None:
    """Many nodes sharing rooms through Redis (docs/scaling.md)."""
    p.add_argument(
        "--redis",
        type=argtypes.redis_url,
        metavar="URL",
        help="share rooms, nicks and history with every node of this Redis or Valkey"
        " (redis://HOST:PORT[/DB], rediss://..., unix:///PATH); history then lives there",
    )
    p.add_argument(
        "--redis-cluster",
        action="store_true",
        help="the --redis URL is one node of a Redis Cluster",
    )
    p.add_argument(
        "--redis-cafile",
        metavar="PEM",
        help="CA certificates to check a rediss:// server's against (default: the system's)",
    )
    p.add_argument(
        "--node-id",
        type=argtypes.node_id,
        help="this node's name in Redis and in logs (default: random)",
    )
    p.add_argument(
        "--redis-lease",
        type=argtypes.positive,
        default=DEFAULTS.redis_lease,
        metavar="SECONDS",
        help="a node's and its nicks' lease; a dead node's members leave within ~1.2x this",
    )


def _auth_arguments(p: argparse.ArgumentParser) -> None:
    """Accounts and tokens (docs/security.md)."""
    p.add_argument(
        "--auth",
        choices=["open", "required"],
        default=DEFAULTS.auth,
        help="open: guests may use any unregistered nick; required: a password or token always",
    )
    p.add_argument(
        "--allow-insecure-auth",
        action="store_true",
        help="accept passwords over plaintext from any address (else: only over TLS or loopback)",
    )
    p.add_argument(
        "--jwt-secret-file",
        type=argtypes.jwt_secret_file,
        metavar="PATH",
        help="file holding the HS256 secret that signs hello tokens (at least 32 bytes)",
    )
    p.add_argument(
        "--jwt-public-key",
        type=argtypes.jwt_public_key,
        metavar="PATH",
        help="PEM public key (RSA: RS256, Ed25519: EdDSA) that verifies hello tokens",
    )
    p.add_argument(
        "--auth-fail-rate",
        type=argtypes.positive,
        default=DEFAULTS.auth_fail_rate,
        help="failed logins per second one address, and one account, may make",
    )
    p.add_argument(
        "--auth-fail-burst",
        type=argtypes.positive_int,
        default=DEFAULTS.auth_fail_burst,
        help="failed logins one address, and one account, may make before the rate applies",
    )


def _config(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        host=args.host,
        port=args.port,
        tcp_port=None if args.no_tcp else args.tcp_port,
        certfile=args.certfile,
        keyfile=args.keyfile,
        rate_limit=args.rate_limit,
        burst=args.burst,
        handshake_timeout=args.handshake_timeout,
        keepalive_interval=args.keepalive_interval,
        keepalive_timeout=args.keepalive_timeout,
        drain_timeout=args.drain_timeout,
        max_line=args.max_line,
        message_timeout=args.message_timeout,
        max_rooms=args.max_rooms,
        max_rooms_per_client=args.max_rooms_per_client,
        room_history_bytes=args.room_history_bytes,
        history_bytes=args.history_bytes,
        max_connections=args.max_connections,
        max_connections_per_ip=args.max_connections_per_ip,
        connect_rate=args.connect_rate,
        connect_burst=args.connect_burst,
        join_rate=args.join_rate,
        join_burst=args.join_burst,
        limit_loopback=args.limit_loopback,
        trusted_proxies=tuple(args.trusted_proxy),
        allowed_origins=tuple(args.allowed_origin),
        outbox_events=args.outbox_events,
        outbox_bytes=args.outbox_bytes,
        history_limit=args.history,
        retention=args.retention,
        db_path=None if args.no_history or args.redis else (args.db or _default_db()),
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        redis_url=args.redis,
        redis_cluster=args.redis_cluster,
        redis_cafile=args.redis_cafile,
        node_id=args.node_id,
        redis_lease=args.redis_lease,
        # Accounts live in the data file (in Redis with --redis: no file, no folder made);
        # with --no-history, only if --db names one.
        accounts_path=_accounts_path(args),
        auth=args.auth,
        allow_insecure_auth=args.allow_insecure_auth,
        auth_fail_rate=args.auth_fail_rate,
        auth_fail_burst=args.auth_fail_burst,
        jwt_secret=args.jwt_secret_file,
        jwt_public_key=args.jwt_public_key,
    )


def _accounts_path(args: argparse.Namespace) -> str | None:
    if args.redis:
        return None
    return args.db if args.no_history else (args.db or _default_db())


def _default_db() -> str:
    """The default history file; its folder is made here (and only for the default)."""
    path = default_db_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    return str(path)


async def _serve_until_signalled(config: ServerConfig) -> None:
    # The receiver exists before the listeners do: no window where Ctrl-C is a traceback.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            async with trio.open_nursery() as nursery:
                server = await nursery.start(serve, config)
                # Everything allocated so far (modules, config, loaded history) lives
                # for the whole run: keep it out of every future collection.
                gc.freeze()
                if config.redis_url is not None:
                    print(f"using redis {parse_redis_url(config.redis_url).shown}", flush=True)
                for url in server.urls:
                    print(f"listening {url}", flush=True)
                if server.metrics_url is not None:
                    print(f"listening {server.metrics_url}", flush=True)
                async for signum in signals:
                    logging.getLogger("triochat").info("%s: stopping", signal.Signals(signum).name)
                    server.stop()
                    break
        except* (CertificateError, ListenError, StoreError, RedisError) as group:
            raise group.exceptions[0] from None


def _run_serve(args: argparse.Namespace) -> int:
    for flag in ("redis_cluster", "redis_cafile"):
        if getattr(args, flag) and not args.redis:
            name = flag.replace("_", "-")
            print(f"triochat: argument --{name}: needs --redis URL", file=sys.stderr)
            return 2
    # A chat server allocates many short-lived objects per event; Python's default
    # thresholds then run full collections every few ms under load (p99 spikes and
    # about a third of the throughput at N=1000, see docs/performance.md).
    gc.set_threshold(GC_THRESHOLD, 20, 100)
    configure_logs(args.log_level, args.log_format)
    # Before anything opens a descriptor: max_connections' default is derived from it.
    raise_open_files_limit()
    try:
        trio.run(_serve_until_signalled, _config(args))
    except CertificateError as exc:  # a bad command line, found before anything listens
        print(f"triochat: {exc}", file=sys.stderr)
        return 2
    except (ListenError, StoreError, RedisError) as exc:
        print(f"triochat: {exc}", file=sys.stderr)
        return 1
    return 0


def _run_tui(args: argparse.Namespace) -> int:
    from tui.cli import run_tui

    return run_tui(args)


SERVE_DESCRIPTION = "Run the chat server: WebSocket and plain TCP listeners, one NDJSON protocol."
CONFIG_DESCRIPTION = (
    "Print the settings serve would run with (same arguments), and where each came from:"
    " a flag, a TRIOCHAT_* environment variable, the --config file, or the default."
)


def serve_parser(
    parser_class: type[argparse.ArgumentParser], command: str = "serve"
) -> argparse.ArgumentParser:
    """``triochat serve`` (or ``config``, which takes the same arguments) on its own:
    no abbreviations, so the flags a command line sets are exactly the ones it spells."""
    parser = parser_class(
        prog=f"triochat {command}",
        description=SERVE_DESCRIPTION if command == "serve" else CONFIG_DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    _serve_arguments(parser)
    return parser


def _run_config(settings: Settings) -> int:
    def mask(key: str, value: object) -> object:
        if key == "redis" and isinstance(value, str):
            return parse_redis_url(value).shown
        return value

    for line in describe(settings, mask):
        print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argtypes.Parser(prog="triochat", description="A chat server and client on Trio.")
    parser.add_argument("--version", action="version", version=f"triochat {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command, text, description in [
        ("serve", "run the chat server", SERVE_DESCRIPTION),
        (
            "config",
            "print the settings serve would run with, and their sources",
            CONFIG_DESCRIPTION,
        ),
    ]:
        sub = commands.add_parser(
            command,
            help=text,
            description=description,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
            allow_abbrev=False,
        )
        _serve_arguments(sub)  # for --help; main() parses these commands itself (layered)
    tui_parser = commands.add_parser(
        "tui", help="run the chat client in this terminal", description="The Textual chat client."
    )
    add_tui_arguments(tui_parser)  # argparse only; Textual loads when the app runs
    tui_parser.set_defaults(run=_run_tui)
    add_account_parser(commands)
    add_rooms_parser(commands)
    return parser


def _version() -> str:
    try:
        return importlib.metadata.version("triochat")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if words and words[0] in ("serve", "config"):
        command = words[0]
        try:
            settings = layered(partial(serve_parser, command=command), argtypes.Parser, words[1:])
        except SettingsError as exc:
            print(f"triochat: {exc}", file=sys.stderr)
            return 2
        return _run_config(settings) if command == "config" else _run_serve(settings.args)
    args = build_parser().parse_args(words)
    return int(args.run(args))
