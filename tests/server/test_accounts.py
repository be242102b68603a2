"""Registered nicks over real sockets: nobody speaks as a registered user without proving it.

Accounts are put in the server's SQLite file with :class:`AccountStore` (the same
code ``triochat account`` uses; its command line is tested in test_account_cli.py).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from wsproto.events import TextMessage

from tests.server.conftest import TEST_CONFIG
from tests.server.helpers import RawWebSocket, settle_join, skip_until
from triochat.client import Client, open_client
from triochat.errors import Rejected
from triochat.protocol import ErrorCode, decode_server, encode
from triochat.protocol.events import Ack, Error, Hello, HistoryPage, Message, Notice, Welcome
from triochat.server import Server, serve
from triochat.server.accounts import AccountStore, hash_password

PASSWORD = "correct horse battery staple"


def add_account(path: Path, nick: str, password: str = PASSWORD) -> None:
    store = AccountStore(path)
    try:
        store.add(nick, hash_password(password))
    finally:
        store.close()


async def start(nursery: trio.Nursery, tmp_path: Path, **changes: object) -> Server:
    config = replace(TEST_CONFIG, accounts_path=str(tmp_path / "data.sqlite3"), **changes)  # type: ignore[arg-type]
    server: Server = await nursery.start(serve, config)
    return server


@pytest.fixture
async def accounts(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Server]:
    """A server whose data file has the account ``ada``."""
    add_account(tmp_path / "data.sqlite3", "ada")
    server = await start(nursery, tmp_path)
    yield server
    server.stop()


async def refused(url: str, nick: str, **hello: object) -> Rejected:
    with pytest.raises(Rejected) as caught:
        async with open_client(url, nick, **hello):  # type: ignore[arg-type]
            pass
    return caught.value


async def next_error(client: Client) -> Error:
    return await skip_until(client, Error)


# --- taking a registered nick ---------------------------------------------------------


@pytest.mark.parametrize("variant", ["ada", "ADA", "Ada"])
async def test_a_guest_cannot_take_a_registered_nick_or_its_case_variant(
    accounts: Server, scheme: str, variant: str
) -> None:
    with trio.fail_after(10):
        rejected = await refused(accounts.url(scheme), variant)
    assert rejected.code == ErrorCode.AUTH_REQUIRED
    assert "registered" in rejected.message


async def test_a_look_alike_of_a_registered_nick_is_refused(accounts: Server) -> None:
    """``ada`` with a Cyrillic first letter: refused as invalid today, and as
    ``ada``'s once nick_key folds confusables; never welcomed."""
    with trio.fail_after(10):
        rejected = await refused(accounts.url("tcp"), "\u0430da")
    assert rejected.code in {ErrorCode.AUTH_REQUIRED, ErrorCode.NICK_INVALID}


@pytest.mark.parametrize(
    ("registered", "guest"),
    [("ace", "\u0430\u0441\u0435"), ("mom", "rnorn"), ("bill", "bi11"), ("bill", "BILL")],
)
async def test_a_look_alike_of_an_offline_registered_nick_needs_its_password(
    nursery: trio.Nursery, tmp_path: Path, registered: str, guest: str
) -> None:
    """Whole-script (Cyrillic ``\\u0430\\u0441\\u0435``), ASCII (``rn``/``m``,
    ``1``/``l``) and case look-alikes are the account's nick: ``auth_required``."""
    add_account(tmp_path / "data.sqlite3", registered)
    server = await start(nursery, tmp_path)
    with trio.fail_after(10):
        rejected = await refused(server.url("tcp"), guest)
    assert rejected.code == ErrorCode.AUTH_REQUIRED
    server.stop()


async def test_the_password_logs_in_and_a_wrong_one_is_refused(
    accounts: Server, scheme: str
) -> None:
    url = accounts.url(scheme)
    with trio.fail_after(10):
        rejected = await refused(url, "ada", password="wrong")
        assert rejected.code == ErrorCode.AUTH_FAILED
        async with open_client(url, "ADA", password=PASSWORD) as ada:
            assert ada.welcome is not None
            assert ada.welcome.nick == "ada"  # as registered, whatever variant logged in


async def test_a_password_for_an_unregistered_nick_is_refused(accounts: Server) -> None:
    with trio.fail_after(10):
        rejected = await refused(accounts.url("tcp"), "nobody", password=PASSWORD)
    assert rejected.code == ErrorCode.AUTH_FAILED


async def test_nobody_changes_nick_to_a_registered_one(accounts: Server, scheme: str) -> None:
    with trio.fail_after(10):
        async with open_client(accounts.url(scheme), "mallory") as mallory:
            await settle_join(mallory)
            for nick in ["ada", "ADA"]:
                await mallory.nick(nick)
                error = await next_error(mallory)
                assert error.code == ErrorCode.AUTH_REQUIRED
            await mallory.say("lobby", "who am I?", id="x")
            said = await skip_until(mallory, Message, text="who am I?")
            assert said.from_ == "mallory"


async def test_the_owner_may_change_case_of_their_own_nick(accounts: Server) -> None:
    with trio.fail_after(10):
        async with open_client(accounts.url("tcp"), "ada", password=PASSWORD) as ada:
            await settle_join(ada)
            await ada.nick("Ada")
            await ada.say("lobby", "still me", id="x")
            said = await skip_until(ada, Message, text="still me")
            assert said.from_ == "Ada"


async def test_a_resumed_hello_needs_the_password_too(accounts: Server, scheme: str) -> None:
    url = accounts.url(scheme)
    with trio.fail_after(10):
        async with open_client(url, "ada", password=PASSWORD) as ada:
            await settle_join(ada)
            await ada.say("lobby", "before", id="1")
            acked = await skip_until(ada, Ack, id="1")
        rejected = await refused(url, "ada", resume={"lobby": acked.seq - 1})
        assert rejected.code == ErrorCode.AUTH_REQUIRED
        async with open_client(
            url, "ada", resume={"lobby": acked.seq - 1}, password=PASSWORD
        ) as again:
            page = await skip_until(again, HistoryPage)
            assert [e.text for e in page.events if isinstance(e, Message)] == ["before"]


# --- register ----------------------------------------------------------------------------


async def test_register_makes_the_nick_need_its_password(accounts: Server, scheme: str) -> None:
    url = accounts.url(scheme)
    with trio.fail_after(10):
        async with open_client(url, "bob") as bob:
            await bob.register("hunter2hunter2")
            notice = await skip_until(bob, Notice)
            assert notice.code == "registered"
        rejected = await refused(url, "BOB")
        assert rejected.code == ErrorCode.AUTH_REQUIRED
        async with open_client(url, "bob", password="hunter2hunter2") as again:
            assert again.welcome is not None


async def test_a_registered_nick_cannot_be_registered_again(
    accounts: Server, tmp_path: Path
) -> None:
    url = accounts.url("tcp")
    with trio.fail_after(10):
        async with open_client(url, "ada", password=PASSWORD) as ada:
            await ada.register("another password")
            assert (await next_error(ada)).code == ErrorCode.NICK_TAKEN
        async with open_client(url, "dave") as guest:
            # The operator registers the nick while a guest holds it: the guest may
            # stay, but cannot make the account its own.
            await trio.to_thread.run_sync(add_account, tmp_path / "data.sqlite3", "dave")
            await guest.register("mine now")
            assert (await next_error(guest)).code == ErrorCode.NICK_TAKEN
        rejected = await refused(url, "dave", password="mine now")
        assert rejected.code == ErrorCode.AUTH_FAILED


async def test_an_empty_password_is_not_registered(accounts: Server) -> None:
    with trio.fail_after(10):
        async with open_client(accounts.url("tcp"), "erin") as erin:
            await erin.register("")
            assert (await next_error(erin)).code == ErrorCode.BAD_EVENT
        async with open_client(accounts.url("tcp"), "erin") as again:
            assert again.welcome is not None


# --- plaintext ------------------------------------------------------------------------------


async def test_passwords_over_plaintext_are_refused_from_a_remote_peer(
    nursery: trio.Nursery, tmp_path: Path, scheme: str
) -> None:
    """Tests run on loopback: switching its exemption off makes the peer "remote"."""
    add_account(tmp_path / "data.sqlite3", "ada")
    server = await start(nursery, tmp_path, loopback_is_secure=False)
    url = server.url(scheme)
    with trio.fail_after(10):
        rejected = await refused(url, "ada", password=PASSWORD)
        assert rejected.code == ErrorCode.INSECURE_AUTH
        assert "TLS" in rejected.message
        assert "--allow-insecure-auth" in rejected.message
        async with open_client(url, "frank") as frank:
            await frank.register("a password")
            assert (await next_error(frank)).code == ErrorCode.INSECURE_AUTH
    server.stop()


async def test_the_operator_may_allow_plaintext_passwords(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    add_account(tmp_path / "data.sqlite3", "ada")
    server = await start(nursery, tmp_path, loopback_is_secure=False, allow_insecure_auth=True)
    with trio.fail_after(10):
        async with open_client(server.url("tcp"), "ada", password=PASSWORD) as ada:
            assert ada.welcome is not None
    server.stop()


# --- auth required ----------------------------------------------------------------------------


async def test_auth_required_refuses_guests_and_renames(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    add_account(tmp_path / "data.sqlite3", "ada")
    server = await start(nursery, tmp_path, auth="required")
    url = server.url("tcp")
    with trio.fail_after(10):
        rejected = await refused(url, "guest")
        assert rejected.code == ErrorCode.AUTH_REQUIRED
        async with open_client(url, "ada", password=PASSWORD) as ada:
            await settle_join(ada)
            await ada.nick("someone_else")
            assert (await next_error(ada)).code == ErrorCode.AUTH_REQUIRED
    server.stop()


# --- guessing -----------------------------------------------------------------------------------


async def test_a_password_guessed_wrong_20_times_locks_out_even_the_right_one(
    nursery: trio.Nursery, tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    """Time stands still (a MockClock that never jumps by itself) until the test moves it."""
    add_account(tmp_path / "data.sqlite3", "ada")
    add_account(tmp_path / "data.sqlite3", "bob")
    server = await start(nursery, tmp_path, auth_fail_rate=0.1, auth_fail_burst=10)
    url = server.url("tcp")
    async with open_client(url, "bystander") as bystander:
        await settle_join(bystander)
        codes = [(await refused(url, "ada", password=f"guess{n}")).code for n in range(20)]
        assert codes == [ErrorCode.AUTH_FAILED] * 10 + [ErrorCode.AUTH_RATE_LIMITED] * 10
        locked = await refused(url, "ada", password=PASSWORD)
        assert locked.code == ErrorCode.AUTH_RATE_LIMITED
        assert "try again in" in locked.message
        # The address is locked out too, for every account...
        assert (await refused(url, "bob", password=PASSWORD)).code == ErrorCode.AUTH_RATE_LIMITED
        # ...but everyone else goes on: guests come in, the bystander is served.
        async with open_client(url, "carol") as carol:
            assert carol.welcome is not None
        await bystander.say("lobby", "unaffected", id="u")
        await skip_until(bystander, Ack, id="u")
        mock_clock.jump(10 / 0.1)  # a full refill
        async with open_client(url, "ada", password=PASSWORD) as ada:
            assert isinstance(ada.welcome, Welcome)
    server.stop()


async def test_guesses_spread_over_many_addresses_still_lock_the_account(
    nursery: trio.Nursery, tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    """Behind a trusted proxy each guess names another client address, so no address
    bucket empties: the account's own bucket is what stops them, for every address."""
    add_account(tmp_path / "data.sqlite3", "ada")
    add_account(tmp_path / "data.sqlite3", "bob")
    server = await start(
        nursery,
        tmp_path,
        auth_fail_rate=0.1,
        auth_fail_burst=10,
        trusted_proxies=("127.0.0.1",),
        allow_insecure_auth=True,  # the proxied clients are not loopback
    )
    url = server.url("ws")
    guesses = [await _login_via(url, f"203.0.113.{n}", "ada", f"guess{n}") for n in range(12)]
    assert guesses == ["auth_failed"] * 10 + ["auth_rate_limited"] * 2
    assert await _login_via(url, "198.51.100.7", "ada", PASSWORD) == "auth_rate_limited"
    assert await _login_via(url, "198.51.100.7", "bob", PASSWORD) == "welcome"
    server.stop()


async def _login_via(url: str, client: str, nick: str, password: str) -> str:
    """Log in through a proxy that names ``client``: ``welcome`` or the error code."""
    raw = await RawWebSocket.connect(url, [(b"x-forwarded-for", client.encode())])
    async with raw.stream:
        await raw.send_text(encode(Hello(nick=nick, password=password)).decode())
        while True:
            event = await raw.next_event(TextMessage)
            assert isinstance(event, TextMessage)
            for line in event.data.splitlines():
                answer = decode_server(line)
                if isinstance(answer, Welcome):
                    return "welcome"
                if isinstance(answer, Error):
                    return answer.code


async def test_a_login_flood_hashes_on_at_most_auth_threads_worker_threads(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Watches the standard library's scrypt: never on the event loop's thread, never
    more at once than ``auth_threads``; a bystander is served meanwhile."""
    add_account(tmp_path / "data.sqlite3", "ada")
    inside, most, on_loop = [0], [0], []
    lock = threading.Lock()
    real = hashlib.scrypt

    def watched(*args: Any, **kwargs: Any) -> bytes:
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        on_loop.append(threading.current_thread() is threading.main_thread())
        try:
            return real(*args, **kwargs)
        finally:
            with lock:
                inside[0] -= 1

    monkeypatch.setattr(hashlib, "scrypt", watched)
    server = await start(nursery, tmp_path, auth_threads=2, auth_fail_burst=100)
    url = server.url("tcp")
    codes: list[str] = []

    async def guess(n: int) -> None:
        codes.append((await refused(url, "ada", password=f"guess{n}")).code)

    with trio.fail_after(20):
        async with open_client(url, "bystander") as bystander:
            await settle_join(bystander)
            async with trio.open_nursery() as flood:
                for n in range(8):
                    flood.start_soon(guess, n)
                await bystander.say("lobby", "still served", id="s")
                await skip_until(bystander, Ack, id="s")
    assert codes == [ErrorCode.AUTH_FAILED] * 8
    assert len(on_loop) == 8
    assert not any(on_loop)
    assert 1 <= most[0] <= 2
    server.stop()
