"""``hello{token}`` over real sockets: JWTs an application signed, and every way one is forged."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import jwt
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from tests.server.conftest import TEST_CONFIG
from tests.server.helpers import skip_until
from tests.server.test_accounts import add_account, refused
from tests.server.test_cli import SERVE, serving
from triochat.client import open_client
from triochat.protocol import ErrorCode
from triochat.protocol.events import Error, Members
from triochat.server import Server, serve

ACROSS_NODES = True

SECRET = b"s" * 32
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ED_KEY = ed25519.Ed25519PrivateKey.generate()


def pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def token(claims: dict[str, Any], key: Any = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def _part(data: dict[str, Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unsigned(claims: dict[str, Any]) -> str:
    """An ``alg: none`` token, built by hand (as an attacker would)."""
    return f"{_part({'alg': 'none', 'typ': 'JWT'})}.{_part(claims)}."


def hmac_with_public_key(claims: dict[str, Any]) -> str:
    """The key-confusion attack: HS256 "signed" with the server's (public) RSA key."""
    signing_input = f"{_part({'alg': 'HS256', 'typ': 'JWT'})}.{_part(claims)}"
    mac = hmac.new(pem(RSA_KEY), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_part(mac)}"


@pytest.fixture
async def server(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Server]:
    """HS256 with SECRET and RS256 with RSA_KEY; the account ``ada`` is registered."""
    add_account(tmp_path / "data.sqlite3", "ada")
    config = replace(
        TEST_CONFIG,
        accounts_path=str(tmp_path / "data.sqlite3"),
        jwt_secret=SECRET,
        jwt_public_key=pem(RSA_KEY),
    )
    running: Server = await nursery.start(serve, config)
    yield running
    running.stop()


async def test_a_signed_token_names_the_nick_even_a_registered_one(
    server: Server, scheme: str
) -> None:
    url = server.url(scheme)
    with trio.fail_after(10):
        for signed in [token({"sub": "ada"}), token({"sub": "ada"}, RSA_KEY, "RS256")]:
            async with open_client(url, "ada", token=signed) as ada:
                assert ada.welcome is not None
                assert ada.welcome.nick == "ada"


async def test_eddsa_tokens_verify_with_an_ed25519_key(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    config = replace(TEST_CONFIG, jwt_public_key=pem(ED_KEY))
    server: Server = await nursery.start(serve, config)
    with trio.fail_after(10):
        async with open_client(
            server.url("tcp"), "zed", token=token({"sub": "zed"}, ED_KEY, "EdDSA")
        ) as zed:
            assert zed.welcome is not None
        rejected = await refused(server.url("tcp"), "zed", token=token({"sub": "zed"}))
        assert rejected.code == ErrorCode.TOKEN_INVALID  # no HS256 secret configured
    server.stop()


@pytest.mark.parametrize(
    ("forged", "code"),
    [
        (token({"sub": "ada", "exp": int(time.time()) - 60}), ErrorCode.TOKEN_EXPIRED),
        (token({"sub": "ada"}, b"x" * 32), ErrorCode.TOKEN_INVALID),  # wrong secret
        (token({"sub": "ada"}, rsa.generate_private_key(65537, 2048), "RS256"), "invalid"),
        (unsigned({"sub": "ada"}), ErrorCode.TOKEN_INVALID),
        (token({"sub": "ada"}, SECRET * 2, "HS384"), ErrorCode.TOKEN_INVALID),  # not ours
        (token({"sub": "ada"}, ED_KEY, "EdDSA"), ErrorCode.TOKEN_INVALID),  # no such key
        (hmac_with_public_key({"sub": "ada"}), ErrorCode.TOKEN_INVALID),
        (token({"sub": "bob"}), ErrorCode.TOKEN_INVALID),  # someone else's
        (token({"nick": "ada"}), ErrorCode.TOKEN_INVALID),  # no sub
        (token({"sub": "ada", "rooms": "lobby"}), ErrorCode.TOKEN_INVALID),
        ("not.a.jwt", ErrorCode.TOKEN_INVALID),
    ],
    ids=[
        "expired",
        "wrong-secret",
        "wrong-rsa-key",
        "alg-none",
        "wrong-algorithm",
        "eddsa-without-key",
        "public-key-as-hmac-secret",
        "other-nick",
        "no-sub",
        "rooms-not-a-list",
        "garbage",
    ],
)
async def test_a_forged_or_expired_token_is_refused_with_its_code(
    server: Server, scheme: str, forged: str, code: str
) -> None:
    expected = ErrorCode.TOKEN_INVALID if code == "invalid" else code
    with trio.fail_after(10):
        rejected = await refused(server.url(scheme), "ada", token=forged)
    assert rejected.code == expected


async def test_the_rooms_claim_bounds_hello_rooms_and_joins(server: Server, scheme: str) -> None:
    signed = token({"sub": "tess", "rooms": ["Lobby", "dev"]})
    with trio.fail_after(10):
        async with open_client(
            server.url(scheme), "tess", rooms=["dev", "secret"], token=signed
        ) as tess:
            assert tess.welcome is not None
            assert tess.welcome.rooms == ["dev"]
            refusal = await skip_until(tess, Error)
            assert refusal.code == ErrorCode.ROOM_FORBIDDEN
            await tess.join("staff")
            assert (await skip_until(tess, Error)).code == ErrorCode.ROOM_FORBIDDEN
            await tess.join("LOBBY")
            await skip_until(tess, Members, room="lobby")


async def test_a_token_holder_keeps_to_its_nick(server: Server) -> None:
    with trio.fail_after(10):
        async with open_client(server.url("tcp"), "tess", token=token({"sub": "tess"})) as tess:
            await tess.nick("ada")
            assert (await skip_until(tess, Error)).code == ErrorCode.AUTH_REQUIRED


async def test_serve_verifies_tokens_with_the_key_files_it_is_given(tmp_path: Path) -> None:
    secret, public = tmp_path / "secret", tmp_path / "public.pem"
    secret.write_bytes(SECRET + b"\n")
    public.write_bytes(pem(ED_KEY))
    flags = ["--port", "0", "--tcp-port", "0", "--no-history"]
    keys = ["--jwt-secret-file", str(secret), "--jwt-public-key", str(public)]
    with trio.fail_after(30):
        async with serving(*flags, *keys) as (_, urls):
            for signed in [token({"sub": "ada"}), token({"sub": "ada"}, ED_KEY, "EdDSA")]:
                async with open_client(urls[1], "ada", token=signed) as ada:
                    assert ada.welcome is not None


async def test_serve_refuses_a_short_secret_or_a_bad_key_in_one_line(tmp_path: Path) -> None:
    short, bad = tmp_path / "short", tmp_path / "bad.pem"
    short.write_bytes(b"too short")
    bad.write_bytes(b"not a key")
    for flag, path, says in [
        ("--jwt-secret-file", short, "at least 32 bytes"),
        ("--jwt-public-key", bad, "not a PEM public key"),
        ("--jwt-public-key", tmp_path / "missing", "No such file"),
    ]:
        done = await trio.run_process(
            [*SERVE, flag, str(path)], capture_stdout=True, capture_stderr=True, check=False
        )
        lines = done.stderr.decode().splitlines()
        assert done.returncode == 2
        assert len(lines) == 1
        assert says in lines[0]
