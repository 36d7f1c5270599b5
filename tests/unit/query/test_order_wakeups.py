"""A `min_version` long-poll wakes for its own order only: the views NOTIFY names the batch's
orders, and a NOTIFY that names none (a feed release, a switch, a reconnect) wakes every one."""

from __future__ import annotations

from services.query.generations import GENERATIONS_CHANNEL
from services.query.notify import Notifications, changed_orders
from services.query.store import VIEWS_CHANNEL


def test_the_payload_names_orders_or_none() -> None:
    assert changed_orders('["o-1","o 2"]') == ["o-1", "o 2"]
    assert changed_orders("[]") == []
    assert changed_orders("7") is None, "a generation number: too many orders for a payload"
    assert changed_orders("feed") is None
    assert changed_orders("[not json") is None
    assert changed_orders("[1]") == []


def test_an_order_waiter_wakes_for_its_own_order_or_for_all_and_is_forgotten() -> None:
    n = Notifications()
    a, b = n.order_waiter("a"), n.order_waiter("b")
    n._on_notify(None, 0, VIEWS_CHANNEL, '["b","c"]')
    assert not a.is_set() and b.is_set()
    n._on_notify(None, 0, VIEWS_CHANNEL, "feed")
    assert a.is_set()
    later = n.order_waiter("a")
    n._on_notify(None, 0, GENERATIONS_CHANNEL, "3")
    assert later.is_set(), "a switch changes every order's current views"
    for order_id, event in (("a", a), ("b", b), ("a", later)):
        n.forget(order_id, event)
    assert n._orders == {}, "nothing left behind by finished waits"
