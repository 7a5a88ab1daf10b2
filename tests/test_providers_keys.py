"""KeyRing: round-robin over a provider's keys, cool-downs on 429/401/403, with a fake clock."""

from __future__ import annotations

import email.utils

import pytest

from tollway.config.secrets import Secret
from tollway.providers._keys import REJECTED_COOLDOWN, KeyRing, retry_after_seconds


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ring(n: int) -> tuple[KeyRing, list[Secret], Clock]:
    keys = [Secret(f"key-{i}") for i in range(n)]
    clock = Clock()
    return KeyRing(keys, clock), keys, clock


def first(r: KeyRing) -> Secret:
    return next(r.attempt_order())


def test_round_robin_when_all_keys_are_ready() -> None:
    r, keys, _ = ring(3)
    assert [first(r) for _ in range(6)] == keys + keys


def test_each_call_tries_each_ready_key_once_starting_at_its_turn() -> None:
    r, keys, _ = ring(3)
    first(r)
    assert list(r.attempt_order()) == [keys[1], keys[2], keys[0]]


def test_a_rate_limited_key_is_skipped_until_retry_after() -> None:
    r, keys, clock = ring(2)
    r.cool_down(keys[0], 429, "7")
    assert r.cooling() == 1
    assert [first(r) for _ in range(3)] == [keys[1]] * 3
    clock.now += 7
    assert r.cooling() == 0
    assert {first(r) for _ in range(2)} == set(keys)


def test_default_cooldowns() -> None:
    r, keys, clock = ring(2)
    r.cool_down(keys[0], 429)
    clock.now += 29.9
    assert r.cooling() == 1
    clock.now += 0.2
    assert r.cooling() == 0
    r.cool_down(keys[1], 401)
    clock.now += REJECTED_COOLDOWN - 1
    assert r.cooling() == 1


def test_when_every_key_cools_the_soonest_is_used() -> None:
    r, keys, _ = ring(3)
    r.cool_down(keys[0], 429, "50")
    r.cool_down(keys[1], 429, "5")
    r.cool_down(keys[2], 403)
    assert list(r.attempt_order()) == [keys[1]]


def test_a_key_cooled_by_another_call_meanwhile_is_skipped() -> None:
    r, keys, _ = ring(3)
    order = r.attempt_order()
    assert next(order) == keys[0]
    r.cool_down(keys[1], 429, "10")  # another request saw key 1 rate-limited
    assert list(order) == [keys[2]]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("7", 7.0), ("0.5", 0.5), ("-3", 0.0), ("99999", 3600.0), ("soon", None), ("", None), (None, None), ("nan", None)],
)
def test_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert retry_after_seconds(value) == expected


def test_retry_after_http_date() -> None:
    date = email.utils.formatdate(1_000_030, usegmt=True)
    assert retry_after_seconds(date, now_epoch=1_000_000) == pytest.approx(30.0)


def test_secrets_never_show() -> None:
    r, keys, _ = ring(1)
    assert "key-0" not in repr(first(r)) and "key-0" not in str(keys)
