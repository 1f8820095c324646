"""Identity ids: unguessable, verifiable, tamper-evident, rotatable, expiring."""

from __future__ import annotations

import base64
import logging
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from progressq import identity as identity_module
from progressq.errors import ConfigurationError
from progressq.identity import IdentityAuthority

SECRET = "s" * 32
OTHER = "o" * 32
_ALPHABET = string.ascii_letters + string.digits + "-_."


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock(1_700_000_000.0)
    monkeypatch.setattr(identity_module, "time", fake)
    return fake


def _random_part(value: str) -> bytes:
    part = value.split(".")[0]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def test_minted_ids_carry_128_random_bits_and_verify() -> None:
    authority = IdentityAuthority(SECRET)
    minted = [authority.mint() for _ in range(500)]
    assert len(set(minted)) == len(minted)
    assert all(authority.verify(value) for value in minted)
    parts = [_random_part(value) for value in minted]
    assert all(len(part) >= 16 for part in parts)
    # Every one of the 128 bits takes both values across the sample (chance of a false
    # failure with a real random source: about 128 * 2**-499).
    numbers = [int.from_bytes(part[:16], "big") for part in parts]
    for bit in range(128):
        assert len({(number >> bit) & 1 for number in numbers}) == 2, f"bit {bit} never changes"


def test_ids_are_url_safe_ascii() -> None:
    value = IdentityAuthority(SECRET).mint()
    assert set(value) <= set(_ALPHABET)
    assert value.count(".") == 2


def test_tampering_any_single_character_fails() -> None:
    authority = IdentityAuthority(SECRET)
    value = authority.mint()
    for index, original in enumerate(value):
        for replacement in _ALPHABET:
            if replacement != original:
                forged = value[:index] + replacement + value[index + 1 :]
                assert not authority.verify(forged), (index, replacement)
        assert not authority.verify(value[:index] + value[index + 1 :]), index
    assert not authority.verify(value + "A")
    assert not authority.verify(value.upper())


def test_another_secret_fails() -> None:
    assert not IdentityAuthority(OTHER).verify(IdentityAuthority(SECRET).mint())


def test_same_secret_verifies_in_another_authority() -> None:
    # What "any process that shares the secret" means.
    assert IdentityAuthority(SECRET.encode()).verify(IdentityAuthority(SECRET).mint())


def test_previous_secret_verifies_during_rotation() -> None:
    old_id = IdentityAuthority(OTHER).mint()
    rotated = IdentityAuthority(SECRET, previous_secrets=[OTHER])
    assert rotated.verify(old_id)
    assert rotated.verify(rotated.mint())
    # New ids are signed with the current secret only.
    assert not IdentityAuthority(OTHER).verify(rotated.mint())
    # Once the old secret is dropped, its ids stop verifying.
    assert not IdentityAuthority(SECRET).verify(old_id)


def test_max_age_expires_ids(clock: FakeClock) -> None:
    authority = IdentityAuthority(SECRET, max_age=60)
    value = authority.mint()
    assert authority.verify(value)
    clock.now += 60
    assert authority.verify(value)
    clock.now += 1.5
    assert not authority.verify(value)
    # Without max_age the same id stays valid.
    assert IdentityAuthority(SECRET).verify(value)


def test_max_age_accepts_fresh_ids_after_a_long_run(clock: FakeClock) -> None:
    authority = IdentityAuthority(SECRET, max_age=60)
    clock.now += 10 * 365 * 86400
    assert authority.verify(authority.mint())


@pytest.mark.parametrize("secret", ["", "short", "x" * 15, b"y" * 15])
def test_short_secrets_are_refused(secret: str | bytes) -> None:
    with pytest.raises(ConfigurationError, match="16 bytes"):
        IdentityAuthority(secret)
    with pytest.raises(ConfigurationError, match="16 bytes"):
        IdentityAuthority(SECRET, previous_secrets=[secret])


def test_sixteen_byte_secrets_are_enough() -> None:
    authority = IdentityAuthority(b"k" * 16)
    assert authority.verify(authority.mint())


@settings(max_examples=200)
@given(st.text(max_size=200) | st.text(alphabet=_ALPHABET, max_size=80))
def test_arbitrary_input_never_raises_and_never_verifies(value: str) -> None:
    authority = IdentityAuthority(SECRET, max_age=3600)
    assert authority.verify(value) is False


@pytest.mark.parametrize("value", [None, 5, b"abc", ["a.b.c"]])
def test_non_strings_never_verify(value: object) -> None:
    assert IdentityAuthority(SECRET).verify(value) is False  # type: ignore[arg-type]


@settings(max_examples=50)
@given(st.text(alphabet=_ALPHABET, min_size=1, max_size=40))
def test_a_valid_signature_over_a_mangled_body_still_fails(suffix: str) -> None:
    authority = IdentityAuthority(SECRET)
    random_part, issued, signature = authority.mint().split(".")
    assert not authority.verify(f"{random_part}{suffix}.{issued}.{signature}")
    assert not authority.verify(f"{random_part}.{issued}{suffix}.{signature}")


def test_oversized_input_is_refused_cheaply() -> None:
    authority = IdentityAuthority(SECRET)
    assert not authority.verify(authority.mint() + "." * 10_000)


def test_no_secret_makes_a_random_one_and_warns_when_first_used(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="progressq.identity"):
        first = IdentityAuthority()
        second = IdentityAuthority()
        assert not caplog.records, "a process that never mints nor verifies (a worker) is not warned"
        value = first.mint()
        assert first.verify(value)
        assert not second.verify(value)
        first.mint()
    warnings = [r for r in caplog.records if r.name == "progressq.identity" and r.levelno == logging.WARNING]
    assert len(warnings) == 2, "once per authority, on its first use"
    assert "PROGRESSQ_SECRET" in warnings[0].getMessage()


def test_a_configured_secret_does_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="progressq.identity"):
        IdentityAuthority(SECRET)
    assert not [r for r in caplog.records if r.name == "progressq.identity"]
