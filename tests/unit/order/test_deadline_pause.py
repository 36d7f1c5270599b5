"""The deadline scheduler's pause between passes: until the earliest deadline, within
[SAGA_TICK_S, SAGA_STEP_TIMEOUT_S], so an idle order service does not look every tick."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.order.deadlines import pause_until
from services.order.settings import OrderSettings

NOW = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)
SETTINGS = OrderSettings(saga_tick_s=0.5, saga_step_timeout_s=30.0)


def test_no_saga_waiting_sleeps_one_step_timeout() -> None:
    # Any saga placed meanwhile gets "now + step timeout": it is not due before the next pass.
    assert pause_until(None, NOW, SETTINGS) == 30.0


def test_sleeps_until_the_earliest_deadline() -> None:
    assert pause_until(NOW + timedelta(seconds=7), NOW, SETTINGS) == 7.0


def test_a_due_or_nearly_due_deadline_waits_one_tick() -> None:
    assert pause_until(NOW - timedelta(seconds=3), NOW, SETTINGS) == 0.5  # a failed saga: not a busy loop
    assert pause_until(NOW + timedelta(seconds=0.1), NOW, SETTINGS) == 0.5


def test_never_longer_than_the_step_timeout() -> None:
    assert pause_until(NOW + timedelta(hours=1), NOW, SETTINGS) == 30.0
