"""Password hashes: salted, slow, self-describing, compared in constant time."""

from __future__ import annotations

import hmac

import pytest

from triochat.server import accounts
from triochat.server.accounts import hash_password, verify_password


def test_a_hash_carries_its_parameters_and_a_fresh_salt() -> None:
    # "!" is no base64 character, so the password cannot appear in a salt or hash by chance
    # (a bare "pw" did, about once in 2,000 runs).
    one, two = hash_password("pw!"), hash_password("pw!")
    scheme, n, r, p, salt, _ = one.split("$")
    assert (scheme, int(n), int(r), int(p)) == ("scrypt", 2**14, 8, 1)
    assert salt != two.split("$")[4]  # a salt per hash: equal passwords, different hashes
    assert "pw!" not in one
    assert verify_password("pw!", one)
    assert not verify_password("pW!", one)


def test_hashes_made_with_other_parameters_still_verify(monkeypatch: pytest.MonkeyPatch) -> None:
    """Raising the cost later must not lock out existing accounts."""
    monkeypatch.setattr(accounts, "SCRYPT_N", 2**10)
    cheap = hash_password("pw")
    monkeypatch.undo()
    assert cheap.split("$")[1] == str(2**10)
    assert verify_password("pw", cheap)


@pytest.mark.parametrize(
    "stored", ["", "plain", "bcrypt$x", "scrypt$a$b$c$d$e", "scrypt$16$8$1$!$!"]
)
def test_a_hash_of_an_unknown_form_never_matches(stored: str) -> None:
    assert not verify_password("pw", stored)


def test_hashes_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison is hmac.compare_digest's (a timing difference cannot be seen from
    outside reliably, so this watches the standard library function being used)."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def watched(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    stored = hash_password("pw")
    monkeypatch.setattr(hmac, "compare_digest", watched)
    assert verify_password("pw", stored)
    assert not verify_password("wrong", stored)
    assert len(calls) == 2
