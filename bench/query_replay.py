"""Query-service replay benchmark: how fast a rebuild re-applies the event topics.

Starts its own Kafka and PostgreSQL on free ports in a temp dir (never a running stack),
writes >= 100,000 facts of realistic order journeys onto fresh topics, lets the query
service build its views from them (generation 1), then POSTs /admin/rebuild and measures
the replay into generation 2 until the atomic switch. Checks the rebuilt tables equal the
incremental ones, prints a summary and writes bench/results/query-replay-latest.json.
The facts are encoded by the contract codec (current schema versions).

BENCH_QUERY_JOURNEYS   order journeys to generate (default 13000, about 103,000 facts)
BENCH_QUERY_PARTITIONS partitions per topic (default 6, as in production)
BENCH_QUERY_MAX_BATCH  records per Kafka poll and transaction (default: the service default)
BENCH_QUERY_PROFILE    if set, a cProfile of the rebuild phase is written to this path
BENCH_QUERY_OUT        where the results go (default bench/results/query-replay-latest.json)
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
from aiokafka import AIOKafkaProducer
from aiokafka.admin import NewTopic

from infra.stack import LocalStack, free_port
from infra.tokens import stack_auth
from services.query import generations, store
from services.query.app import create_app
from services.query.settings import QuerySettings
from shared.contract import (
    EVENT_TOPICS,
    Address,
    Envelope,
    Fact,
    Money,
    OrderCancelled,
    OrderConfirmed,
    OrderDelivered,
    OrderFact,
    OrderLine,
    OrderPlaced,
    OrderRejected,
    OrderShipped,
    PaymentAuthorized,
    PaymentCaptured,
    PaymentDeclined,
    PaymentFact,
    PaymentRefunded,
    PaymentVoided,
    ShipmentCancelled,
    ShipmentDelivered,
    ShipmentDispatched,
    ShipmentFact,
    ShipmentFailed,
    ShipmentScheduled,
    encode,
)
from shared.ids import derived_id
from shared.kafka import make_admin

RESULTS = Path(__file__).with_name("results")
JOURNEYS = int(os.environ.get("BENCH_QUERY_JOURNEYS", "13000"))
PARTITIONS = int(os.environ.get("BENCH_QUERY_PARTITIONS", "6"))
MAX_BATCH = os.environ.get("BENCH_QUERY_MAX_BATCH")
PROFILE = os.environ.get("BENCH_QUERY_PROFILE")  # write a cProfile of the rebuild phase here
OUT = Path(os.environ.get("BENCH_QUERY_OUT") or RESULTS / "query-replay-latest.json")
GROUPS: tuple[type[Fact], ...] = (OrderFact, PaymentFact, ShipmentFact)
SOURCES = {OrderFact: "/services/order", PaymentFact: "/services/payment", ShipmentFact: "/services/shipping"}
ADDRESS = Address(name="N", line1="1 Main St", city="C", postal_code="1", country="DE")

# (share of journeys, the facts of the journey in order)
MIX: list[tuple[float, list[type[Fact]]]] = [
    (
        0.70,
        [
            OrderPlaced,
            PaymentAuthorized,
            ShipmentScheduled,
            PaymentCaptured,
            OrderConfirmed,
            ShipmentDispatched,
            OrderShipped,
            ShipmentDelivered,
            OrderDelivered,
        ],
    ),
    (0.10, [OrderPlaced, PaymentDeclined, OrderRejected]),
    (0.10, [OrderPlaced, PaymentAuthorized, ShipmentFailed, PaymentVoided, OrderCancelled]),
    (
        0.10,
        [
            OrderPlaced,
            PaymentAuthorized,
            ShipmentScheduled,
            PaymentCaptured,
            OrderConfirmed,
            ShipmentCancelled,
            PaymentRefunded,
            OrderCancelled,
        ],
    ),
]
REASONS: dict[type[Fact], str] = {
    PaymentDeclined: "card_declined",
    OrderRejected: "payment_declined:card_declined",
    ShipmentFailed: "destination_not_served",
    PaymentVoided: "shipping_failed",
    OrderCancelled: "cancelled_by_customer",
    ShipmentCancelled: "cancelled_by_customer",
    PaymentRefunded: "cancelled_by_customer",
}


def group_of(cls: type[Fact]) -> type[Fact]:
    return next(g for g in GROUPS if issubclass(cls, g))


def journey(rng: random.Random, start: datetime) -> list[tuple[type[Fact], str, bytes]]:
    """One order's facts as (group, key, CloudEvents bytes), the way the services publish them."""
    steps = rng.choices([s for _, s in MIX], weights=[w for w, _ in MIX])[0]
    order_id = str(uuid.uuid4())
    payment_id, shipment_id = derived_id(order_id, "payment"), derived_id(order_id, "shipment")
    ids = {OrderFact: order_id, PaymentFact: payment_id, ShipmentFact: shipment_id}
    currency = rng.choice(["EUR", "EUR", "USD", "GBP"])
    items = tuple(
        OrderLine(
            sku=f"SKU-{rng.randint(1, 500)}", quantity=rng.randint(1, 3), unit_price_cents=rng.randint(100, 20000)
        )
        for _ in range(rng.randint(1, 3))
    )
    total = sum(i.line_total_cents for i in items)
    versions = dict.fromkeys(GROUPS, 0)
    out = []
    previous = str(uuid.uuid4())
    when = start
    for cls in steps:
        group = group_of(cls)
        versions[group] += 1
        when += timedelta(milliseconds=rng.randint(5, 400))
        fields: dict[str, Any] = {"order_id": order_id}
        if cls is OrderPlaced:
            fields |= {
                "customer_id": f"cust-{rng.randint(1, 2000)}",
                "items": items,
                "currency": currency,
                "total_cents": total,
                "shipping_address": ADDRESS,
            }
        elif group is PaymentFact:
            fields |= {"payment_id": payment_id, "amount": Money(amount_cents=total, currency=currency)}
        elif group is ShipmentFact:
            fields |= {"shipment_id": shipment_id}
        if cls is ShipmentScheduled:
            fields["address"] = ADDRESS
        if cls is OrderConfirmed:
            fields |= {"payment_id": payment_id, "shipment_id": shipment_id}
        if cls in (OrderShipped, OrderDelivered):
            fields["shipment_id"] = shipment_id
        if cls in REASONS:
            fields["reason"] = REASONS[cls]
        envelope: Envelope[Fact] = Envelope(
            id=str(uuid.uuid4()),
            source=SOURCES[group],
            subject=ids[group],
            sequence=versions[group],
            time=when,
            correlation_id=order_id,
            causation_id=previous if group is OrderFact else str(uuid.uuid4()),
            data=cls(**fields),
        )
        previous = envelope.id
        out.append((group, ids[group], encode(envelope)))
    return out


async def publish(bootstrap: str, topics: dict[type[Fact], str]) -> int:
    rng = random.Random(42)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=20, max_batch_size=512 * 1024
    )
    await producer.start()
    count = 0
    try:
        pending = []
        for n in range(JOURNEYS):
            for group, key, value in journey(rng, start + timedelta(seconds=n)):
                pending.append(await producer.send(topics[group], value, key=key.encode()))
                count += 1
            if len(pending) >= 20000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return count


async def view_tables(conn: asyncpg.Connection, generation: int) -> tuple[list[Any], list[Any]]:
    schema = store.schema_of(generation)
    orders = [tuple(r) for r in await conn.fetch(f"SELECT * FROM {schema}.orders ORDER BY order_id")]
    timeline = [tuple(r) for r in await conn.fetch(f"SELECT * FROM {schema}.timeline ORDER BY event_id")]
    return orders, timeline


async def wait_caught_up(
    conn: asyncpg.Connection, consumer: str, target: generations.Offsets, timeout_s: float = 900
) -> float:
    """Poll (bounded) until the consumer's stored positions reach the target; return the time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if generations.reached(await generations.positions(conn, consumer), target):
            return time.monotonic()
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{consumer} did not catch up within {timeout_s}s")


def cpu_seconds() -> dict[str, float]:
    """CPU time used so far by this process, PostgreSQL and Kafka (children of this process)."""
    me = psutil.Process()
    out = {"python": sum(me.cpu_times()[:2]), "postgres": 0.0, "kafka": 0.0}
    for child in me.children(recursive=True):
        try:
            name = " ".join(child.cmdline())
            times = child.cpu_times()
        except psutil.Error:
            continue
        kind = "postgres" if "postgres" in name else "kafka" if "java" in name else None
        if kind is not None:
            out[kind] += times.user + times.system
    return out


async def main_async(stack: LocalStack) -> dict[str, Any]:
    suffix = uuid.uuid4().hex[:6]
    topics = {g: f"bench-{suffix}.{topic}" for g, topic in zip(GROUPS, EVENT_TOPICS)}
    assert all(g.TOPIC == topic for g, topic in zip(GROUPS, EVENT_TOPICS))
    admin = make_admin(stack.kafka_bootstrap, client_id="bench-query-replay")
    await admin.start()
    forever = {"retention.ms": "-1", "retention.bytes": "-1"}
    await admin.create_topics(
        [NewTopic(t, PARTITIONS, 1, topic_configs=forever) for t in topics.values()]
        + [NewTopic(t + ".dlq", 1, 1) for t in topics.values()]
    )
    await admin.close()

    t0 = time.monotonic()
    facts = await publish(stack.kafka_bootstrap, topics)
    produce_s = time.monotonic() - t0
    print(f"published {facts} facts of {JOURNEYS} journeys in {produce_s:.1f}s")

    pg_admin = await asyncpg.connect(stack.pg_admin_dsn())
    await pg_admin.execute('CREATE DATABASE "bench_query" OWNER app')
    await pg_admin.close()
    dsn = stack.pg_dsn("bench_query")
    overrides: dict[str, Any] = {} if MAX_BATCH is None else {"consumer_max_batch": int(MAX_BATCH)}
    auth = stack_auth(stack.run_dir)  # POST /admin/rebuild needs an admin token
    settings = QuerySettings(
        database_url=dsn,
        auth_jwks_file=str(auth.keys.jwks_path),
        kafka_bootstrap_servers=stack.kafka_bootstrap,
        query_topics=",".join(topics.values()),
        generation_poll_s=0.05,
        **overrides,
    )
    app = create_app(settings)
    conn = await asyncpg.connect(dsn)
    try:
        started = time.monotonic()
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://query.bench", timeout=60, auth=auth
            ) as client:
                [first] = await generations.generations(conn, ["current"])
                from services.query.rebuild import end_offsets

                ends = await end_offsets(stack.kafka_bootstrap, list(topics.values()))
                initial_done = await wait_caught_up(conn, first.consumer, ends)
                initial_s = initial_done - started
                print(f"initial build (generation 1): {facts / initial_s:,.0f} facts/s ({initial_s:.1f}s)")

                profiler = None
                if PROFILE:
                    import cProfile

                    profiler = cProfile.Profile()
                    profiler.enable()
                cpu_before = cpu_seconds()
                t_post = time.monotonic()
                response = await client.post("/admin/rebuild")
                assert response.status_code == 202, response.text
                rebuild = response.json()
                first_applied: float | None = None
                while True:
                    status = (await client.get(f"/admin/rebuild/{rebuild['rebuild_id']}")).json()
                    now = time.monotonic()
                    if first_applied is None and status["applied_total"] > 0:
                        first_applied = now
                    if status["done"]:
                        break
                    if now - t_post > 900:
                        raise TimeoutError("rebuild did not finish")
                    await asyncio.sleep(0.05)
                switched_s = time.monotonic() - t_post
                cpu_after = cpu_seconds()
                load = os.getloadavg()
                cores = os.cpu_count() or 1
                if profiler is not None and PROFILE:
                    profiler.disable()
                    profiler.dump_stats(PROFILE)
                row = await conn.fetchrow(
                    "SELECT created_at, caught_up_at, switched_at FROM view_generations WHERE generation = $1",
                    rebuild["generation"],
                )
                db_s = (row["switched_at"] - row["created_at"]).total_seconds()
                apply_s = switched_s - ((first_applied - t_post) if first_applied else 0.0)
                replayed = status["target_total"]
                cpu_per_fact = {k: round((cpu_after[k] - cpu_before[k]) * 1e6 / replayed, 1) for k in cpu_after}
                old = await view_tables(conn, first.generation)
                new = await view_tables(conn, rebuild["generation"])
                identical = old == new
                orders = len(new[0])
    finally:
        await conn.close()
    return {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "facts": facts,
        "journeys": JOURNEYS,
        "orders_in_view": orders,
        "partitions_per_topic": PARTITIONS,
        "consumer_max_batch": settings.consumer_max_batch,
        "publish_s": round(produce_s, 2),
        "initial_build": {"seconds": round(initial_s, 2), "facts_per_s": round(facts / initial_s)},
        "rebuild": {
            "replayed_facts": replayed,
            "post_to_switch_s": round(switched_s, 2),
            "facts_per_s": round(replayed / switched_s),
            "facts_per_s_db_clock": round(replayed / db_s) if db_s > 0 else None,
            "facts_per_s_excluding_group_join": round(replayed / apply_s) if apply_s > 0 else None,
            "identical_to_incremental": identical,
            "cpu_seconds": {k: round(cpu_after[k] - cpu_before[k], 2) for k in cpu_after},
            "cpu_us_per_fact": cpu_per_fact,
            # What the CPU cost per fact allows on this machine, whatever else runs on it:
            # all three processes sharing the cores, and the single-threaded Python process.
            "ceiling_facts_per_s_all_cores": round(cores * 1e6 / sum(cpu_per_fact.values())),
            "ceiling_facts_per_s_python_alone": round(1e6 / cpu_per_fact["python"]),
            "load_average_1m_at_end": round(load[0], 2),
        },
        "target_facts_per_s": 20000,
        "notes": "rebuild = POST /admin/rebuild until the atomic switch: a fresh consumer group reads the "
        "three topics from offset 0 into a new view generation (timeline insert + orders upsert per "
        "partition batch, inbox and positions in the same transaction) while generation 1 keeps serving",
    }


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-query-") as tmp:
        stack = LocalStack(Path(tmp), kafka_port=free_port(), controller_port=free_port(), pg_port=free_port())
        try:
            stack.start()
            results = asyncio.run(main_async(stack))
        finally:
            stack.stop()
    out = OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    r = results["rebuild"]
    print(
        f"cpu per fact (us): {r['cpu_us_per_fact']} -> ceilings: {r['ceiling_facts_per_s_all_cores']:,}/s on all "
        f"cores, {r['ceiling_facts_per_s_python_alone']:,}/s for the Python process "
        f"(load average {r['load_average_1m_at_end']})"
    )
    print(
        f"rebuild replay: {r['replayed_facts']} facts in {r['post_to_switch_s']}s = {r['facts_per_s']:,} facts/s "
        f"(excluding consumer-group join: {r['facts_per_s_excluding_group_join']:,}/s); "
        f"identical to incremental: {r['identical_to_incremental']}"
    )
    print(f"written to {out}")


if __name__ == "__main__":
    main()
