"""Property: whatever the interleaving, duplication, lateness, cancels, timeouts and
operator actions, once all services are up the saga's invariants hold (World.check_invariants)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.order import saga
from shared.contract import OrderStatus

from .world import World

# Weighted by repetition: messages flow far more often than timers fire or customers cancel.
ACTIONS = (
    ("cmd",) * 6
    + ("reply",) * 6
    + ("dispatch",) * 3
    + ("deliver",) * 2
    + ("dup", "dup_new_id", "dup_cmd", "timeout", "cancel", "wait")
)

action_lists = st.lists(st.tuples(st.sampled_from(ACTIONS), st.integers(0, 50)), max_size=80)


def play(w: World, actions: list[tuple[str, int]]) -> None:
    streams = ("payment", "shipping")
    for action, n in actions:
        if action == "cmd":
            keys = [k for k, q in w.command_queues.items() if q]
            if keys:
                w.run_command(keys[n % len(keys)])
        elif action == "reply":
            w.deliver_reply(streams[n % 2])
        elif action == "dup":
            w.redeliver(n)
        elif action == "dup_new_id":
            if w.delivered:  # the same fact again under another message id (a re-publication)
                old = w.delivered[n % len(w.delivered)]
                w.feed(saga.ReplyReceived(f"republished-{len(w.saga_log)}-{n}", old.fact))
        elif action == "dup_cmd":
            if w.sent:  # a command redelivered (after later ones: the worst case)
                outgoing = w.sent[n % len(w.sent)]
                w.command_queues[outgoing.command.target_id].append(outgoing)
        elif action == "timeout":
            w.timeout()
        elif action == "cancel":
            w.cancel()
        elif action == "dispatch":
            # The warehouse works from confirmed orders (it may still race a cancel).
            if w.order.status is OrderStatus.CONFIRMED:
                w.operator("dispatch")
        elif action == "deliver":
            w.operator("deliver")
        elif action == "wait":
            w.later(n)
        assert saga.fold(w.saga_log) == w.saga


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    token=st.sampled_from(["tok_ok", "tok_ok", "tok_decline"]),
    country=st.sampled_from(["DE", "DE", "AQ"]),
    limit=st.sampled_from([1_000_000, 1_000_000, 100]),
    actions=action_lists,
)
def test_any_interleaving_keeps_the_invariants(
    token: str, country: str, limit: int, actions: list[tuple[str, int]]
) -> None:
    w = World(token=token, country=country, limit_cents=limit)
    w.place()
    play(w, actions)
    w.settle()
    w.check_invariants()
    # Nothing left to do: a further timer or any redelivery decides nothing.
    assert saga.decide(saga.StepTimedOut(), w.saga, w.now).is_empty
    for i in range(len(w.delivered)):
        redelivered = w.redeliver(i)
        assert redelivered is not None and redelivered.commands == [] and redelivered.order_commands == []


@settings(max_examples=200, deadline=None)
@given(actions=action_lists, after=action_lists)
def test_operator_can_finish_every_confirmed_order(
    actions: list[tuple[str, int]], after: list[tuple[str, int]]
) -> None:
    w = World()
    w.place()
    play(w, actions)
    w.settle()
    if w.order.status is OrderStatus.CONFIRMED:
        w.operator("dispatch")
        play(w, after)
        w.operator("deliver")
        w.settle()
        w.check_invariants()
        assert w.order.status in (OrderStatus.DELIVERED, OrderStatus.SHIPPED, OrderStatus.CANCELLED)
