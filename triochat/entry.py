"""The programs' front doors (``triochat``, ``harness``): nothing heavy is imported here.

A Ctrl-C can arrive before a program has loaded its modules (Trio, Textual,
Rich take most of a second), while it runs, or after; whenever it comes, a
person gets one line and the shell's usual status for it, never a traceback.
"""

from __future__ import annotations

import importlib
import sys

EXIT_INTERRUPTED = 130
"""128 + SIGINT, what a shell reports for a program stopped with Ctrl-C."""


def triochat() -> int:
    return _run("triochat", "triochat.cli")


def harness() -> int:
    return _run("harness", "harness.cli")


def _run(prog: str, module: str) -> int:
    try:
        main = importlib.import_module(module).main
        return int(main())
    except KeyboardInterrupt:
        pass
    except BaseExceptionGroup as group:  # raised inside a nursery, e.g. before a handler is set
        if group.split(KeyboardInterrupt)[1] is not None:
            raise
    print(f"{prog}: interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED
