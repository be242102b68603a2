"""TLS contexts: the server's (from ``--certfile``/``--keyfile``) and a client's.

Both refuse anything older than TLS 1.2. A client verifies the server's
certificate and host name against the system's CAs, or against ``cafile``
(a private CA) when one is given. Every failure to load a file is one
:class:`~triochat.errors.CertificateError` line naming the file and why.
"""

from __future__ import annotations

import ssl

from triochat.errors import CertificateError

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


def server_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    """The listeners' context: ``certfile`` (the chain, PEM) and the key that matches it."""
    for path in (certfile, keyfile):
        _check_readable(path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = MINIMUM_VERSION
    try:
        context.load_cert_chain(certfile, keyfile)
    except ssl.SSLError as exc:
        why = _WHY.get(exc.reason or "", "not a PEM certificate chain and its private key")
        raise CertificateError(f"cannot use {certfile} with {keyfile}: {why}") from None
    except OSError as exc:
        raise CertificateError(f"cannot use {certfile} with {keyfile}: {_strerror(exc)}") from None
    return context


_WHY = {"KEY_VALUES_MISMATCH": "the key does not match the certificate"}
"""Readable words for the OpenSSL reasons a person can cause."""


def client_context(cafile: str | None = None) -> ssl.SSLContext:
    """A verifying client context: the system's CAs, or only ``cafile``'s when given."""
    if cafile is not None:
        _check_readable(cafile)
    try:
        context = ssl.create_default_context(cafile=cafile)
    except ssl.SSLError:
        raise CertificateError(f"{cafile}: not a PEM certificate") from None
    except OSError as exc:
        raise CertificateError(f"{cafile}: {_strerror(exc)}") from None
    context.minimum_version = MINIMUM_VERSION
    return context


def _check_readable(path: str) -> None:
    """:class:`CertificateError` naming ``path`` if it cannot be read (missing, denied)."""
    try:
        with open(path, "rb") as file:
            file.read(1)
    except OSError as exc:
        raise CertificateError(f"{path}: {_strerror(exc)}") from None


def _strerror(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()
