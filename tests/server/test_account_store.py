"""The accounts table on a real SQLite file: one account per nick key, whoever writes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from triochat.server.accounts import AccountExists, AccountStore, NoSuchAccount


def test_one_account_per_nick_key_and_the_first_one_stays(tmp_path: Path) -> None:
    store = AccountStore(tmp_path / "data.sqlite3")
    try:
        store.add("Ada", "hash-1")
        with pytest.raises(AccountExists):
            store.add("ADA", "hash-2")
        found = store.lookup("aDa")
        assert found is not None
        assert (found.nick, found.hash) == ("Ada", "hash-1")
        with pytest.raises(NoSuchAccount):
            store.set_hash("bob", "hash-3")
    finally:
        store.close()


def test_a_second_store_on_the_file_sees_changes_at_once(tmp_path: Path) -> None:
    """What the operator's command writes, a running server reads at the next lookup."""
    server, operator = AccountStore(tmp_path / "d.sqlite3"), AccountStore(tmp_path / "d.sqlite3")
    try:
        assert server.lookup("ada") is None
        operator.add("ada", "h")
        assert server.lookup("ada") is not None
        operator.remove("ada")
        assert server.lookup("ada") is None
    finally:
        server.close()
        operator.close()
