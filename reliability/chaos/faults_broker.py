"""Kafka-cluster faults: one broker of a 3-broker KRaft cluster SIGKILLed under load, then restarted.

Why a fault of its own: on one broker, losing Kafka stops every relay and consumer until it is
back (`kill-kafka`). On a cluster with replication factor 3 and `min.insync.replicas=2`, the
acks=all producers and the consumers must carry on while any one node is down: its partition
leaders and (when it is the active controller) the controller move to the others, and no
acknowledged fact may be lost or applied twice. The harness runs these faults on a private
3-broker stack of their own (`BROKERS`), so every other fault keeps its one-broker stack.

The node killed is the active controller (the quorum leader), the worst single loss: the
controller fails over and a third of the partition leaders move at once. Besides the audit, the
fault records how long orders took from placed to their next fact (settled) when placed while
the node was down, against those placed before: the flow's stall, which the 202s do not show.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import asyncpg

from shared.contract import ALL_TOPICS, OrderPlaced

if TYPE_CHECKING:
    from infra.kafka_cluster import KafkaCluster
    from reliability.chaos.config import FaultResult
    from reliability.chaos.harness import ChaosHarness

#: Kafka nodes the stack of these faults runs.
BROKERS = 3
#: The faults of this module (their descriptions are in `config.DESCRIPTIONS`).
FAULTS = ("kill-broker",)

Inject = Callable[["FaultResult"], Awaitable[None]]

#: Seconds from each order's placing to its next fact, for orders placed since $2.
_SETTLE_SQL = """
SELECT p.occurred_at AS placed_at, EXTRACT(EPOCH FROM (s.occurred_at - p.occurred_at))::float8 AS settle_s
FROM events p JOIN events s ON s.stream_id = p.stream_id AND s.version = 2
WHERE p.version = 1 AND p.type = $1 AND p.occurred_at >= $2
"""


def brokers_for(fault: str) -> int:
    """Kafka nodes the private stack needs for `fault`."""
    return BROKERS if fault in FAULTS else 1


def injector(h: ChaosHarness, fault: str) -> Inject:
    if fault == "kill-broker":
        return lambda r: kill_broker(h, r)
    raise ValueError(f"not a broker fault: {fault!r}")


async def kill_broker(h: ChaosHarness, result: FaultResult) -> None:
    """SIGKILL the active controller for `--fault-s`, restart it, wait for its replicas to catch up."""
    from infra.kafka_cluster import KafkaCluster

    cluster = h.stack.kafka
    if not isinstance(cluster, KafkaCluster):
        raise RuntimeError(f"kill-broker needs a {BROKERS}-broker stack, the harness runs one broker")
    controller = cluster.quorum_leader()
    victim = controller or 1
    result.details.update(
        brokers=len(cluster.brokers),
        replication=list(cluster.replication),
        killed_node=victim,
        killed_was_controller=controller == victim,
        partitions_it_led=await partitions_led_by(h.stack.kafka_bootstrap, victim),
    )
    load_started = datetime.now(UTC) - timedelta(seconds=h.config.pre_s)  # this fault's load began
    # In a thread of its own: the node is down for `fault_s` even when the event loop that also
    # drives the load is slow to get back to this coroutine.
    killed_wall, rejoined_wall = await asyncio.to_thread(_outage, h, cluster, victim, result)

    async def settle_times(r: FaultResult) -> bool:
        """Recorded once every order has settled (the recovery loop calls it before the audit)."""
        r.details["settle_s"] = await settle_stats(h, load_started, killed_wall, rejoined_wall)
        return True

    h.verify = settle_times


def _outage(h: ChaosHarness, cluster: KafkaCluster, victim: int, result: FaultResult) -> tuple[datetime, datetime]:
    """Kill, stay down `fault_s`, restart, wait until in sync; the wall-clock times of kill and rejoin."""
    from infra._aio import run_sync
    from infra.kafka_cluster import under_replicated

    fault_s = h.config.fault_s
    h.stack.kill_broker(victim)
    killed_at, killed_wall = time.monotonic(), datetime.now(UTC)
    # acks=all writes wait for every in-sync replica, and the dead node's partitions for a new
    # leader, until the controller fences it (broker.session.timeout.ms = 3 s); when it was the
    # controller, the quorum first elects another (~2-4 s: controller.quorum.fetch.timeout.ms is 2 s).
    result.details["first_under_replicated_s"] = None
    lagging = 0
    while (elapsed := time.monotonic() - killed_at) < fault_s:
        try:
            lagging = run_sync(lambda: under_replicated(h.stack.kafka_bootstrap, ALL_TOPICS))
        except Exception:
            lagging = 0  # no answer this time: nothing learnt
        if lagging and result.details["first_under_replicated_s"] is None:
            result.details["first_under_replicated_s"] = round(elapsed, 2)
        time.sleep(min(0.5, max(fault_s - (time.monotonic() - killed_at), 0.0)))
    result.details["under_replicated_while_down"] = lagging
    result.details["controller_while_down"] = cluster.quorum_leader()
    result.details["down_s"] = round(time.monotonic() - killed_at, 2)
    t = time.monotonic()
    h.stack.start_broker(victim)
    rejoined_wall = datetime.now(UTC)
    result.details["restart_rejoined_s"] = round(time.monotonic() - t, 2)
    lagging = cluster.wait_in_sync(list(ALL_TOPICS), 120.0)
    result.details["restart_in_sync_s"] = round(time.monotonic() - t, 2)
    if lagging:
        raise RuntimeError(f"node {victim} restarted but {lagging} partitions are still under-replicated")
    return killed_wall, rejoined_wall


async def settle_stats(
    h: ChaosHarness, since: datetime, killed: datetime, rejoined: datetime
) -> dict[str, dict[str, float | int]]:
    """Placed → next fact, in seconds (count, p50, p99, max), for orders placed before the kill and
    while the node was down."""
    conn = await asyncpg.connect(h.stack.pg_dsn("order"), timeout=10)
    try:
        rows = await conn.fetch(_SETTLE_SQL, OrderPlaced.TYPE, since)
    finally:
        await conn.close()
    windows = {
        "before_kill": [r["settle_s"] for r in rows if r["placed_at"] < killed],
        "while_down": [r["settle_s"] for r in rows if killed <= r["placed_at"] < rejoined],
    }
    return {name: _summary(values) for name, values in windows.items()}


def _summary(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"orders": 0}
    ordered = sorted(values)

    def pct(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 3)

    return {"orders": len(ordered), "p50": pct(0.5), "p99": pct(0.99), "max": round(ordered[-1], 3)}


async def partitions_led_by(bootstrap: str, node_id: int) -> int:
    """Partitions of the contract's topics whose leader is `node_id`."""
    from shared.kafka import make_admin

    admin = make_admin(bootstrap, client_id="chaos-broker-fault")
    await admin.start()
    try:
        described = await admin.describe_topics(list(ALL_TOPICS))
    finally:
        await admin.close()
    return sum(1 for t in described for p in t["partitions"] if p["leader"] == node_id)
