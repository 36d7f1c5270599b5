"""View generations: which set of view tables is current, which one a rebuild is building, and
the atomic switch between them (the `view_generations` table of views.sql).

Each generation has its own schema `views_g<N>` and its own consumer name (= Kafka group id,
inbox and stored-position key). Batches (the generation's writer, views.sql) hold the generation
lock shared; starting a rebuild and switching take it exclusively, so no batch is ever half on
either side of a switch.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from services.query.store import Views, append_feed, schema_of

# The same constants are written in views.sql (the generations' batch writers).
GENERATION_LOCK = 4539207  # batches share it; a generation switch or new rebuild takes it alone
GENERATIONS_CHANNEL = "query_generations"  # NOTIFY when a rebuild starts or a switch happens

LIVE_STATES = ("current", "building")

#: Next offset by (topic, partition).
Offsets = dict[tuple[str, int], int]


def bootstrap_sql(consumer_prefix: str) -> str:
    """DDL run at start-up after views.sql: the first generation, once per database."""
    prefix = consumer_prefix.replace("'", "''")
    return f"""
DO $boot$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM view_generations) THEN
        PERFORM query_create_generation(1);
        INSERT INTO view_generations (generation, state, consumer, switched_at)
        VALUES (1, 'current', '{prefix}.g1-' || substr(md5(random()::text || clock_timestamp()::text), 1, 8), now());
    END IF;
END $boot$;
"""


@dataclass(frozen=True)
class Generation:
    generation: int
    state: str
    consumer: str
    rebuild_id: uuid.UUID | None
    target: Offsets | None
    created_at: datetime
    caught_up_at: datetime | None
    switched_at: datetime | None
    retired_at: datetime | None

    @property
    def schema(self) -> str:
        return schema_of(self.generation)


def offsets_by_topic(offsets: Offsets) -> dict[str, dict[str, int]]:
    """`{"topic": {"partition": offset}}`: how offsets are stored and shown."""
    out: dict[str, dict[str, int]] = {}
    for (topic, partition), value in sorted(offsets.items()):
        out.setdefault(topic, {})[str(partition)] = value
    return out


def _offsets_from_json(doc: Mapping[str, Mapping[str, int]] | None) -> Offsets | None:
    if doc is None:
        return None
    return {(topic, int(p)): int(end) for topic, parts in doc.items() for p, end in parts.items()}


def _generation(r: asyncpg.Record) -> Generation:
    return Generation(
        generation=r["generation"],
        state=r["state"],
        consumer=r["consumer"],
        rebuild_id=r["rebuild_id"],
        target=_offsets_from_json(r["target_offsets"]),
        created_at=r["created_at"],
        caught_up_at=r["caught_up_at"],
        switched_at=r["switched_at"],
        retired_at=r["retired_at"],
    )


_GEN_COLUMNS = (
    "generation, state, consumer, rebuild_id, target_offsets, created_at, caught_up_at, switched_at, retired_at"
)


async def current_generation(conn: asyncpg.Connection) -> int:
    generation: int | None = await conn.fetchval("SELECT generation FROM view_generations WHERE state = 'current'")
    if generation is None:
        raise RuntimeError("no current view generation (migrations not applied?)")
    return generation


async def generations(conn: asyncpg.Connection, states: Sequence[str] | None = None) -> list[Generation]:
    if states is None:
        rows = await conn.fetch(f"SELECT {_GEN_COLUMNS} FROM view_generations ORDER BY generation")
    else:
        rows = await conn.fetch(
            f"SELECT {_GEN_COLUMNS} FROM view_generations WHERE state = ANY($1::text[]) ORDER BY generation",
            list(states),
        )
    return [_generation(r) for r in rows]


async def generation_by_rebuild(conn: asyncpg.Connection, rebuild_id: uuid.UUID) -> Generation | None:
    row = await conn.fetchrow(f"SELECT {_GEN_COLUMNS} FROM view_generations WHERE rebuild_id = $1", rebuild_id)
    return _generation(row) if row is not None else None


async def positions(conn: asyncpg.Connection, consumer: str) -> Offsets:
    """The consumer's next offsets as stored with its views (the kernel's consumer_positions)."""
    rows = await conn.fetch(
        "SELECT topic, partition, next_offset FROM consumer_positions WHERE consumer = $1", consumer
    )
    return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}


class RebuildInProgress(Exception):
    def __init__(self, generation: Generation) -> None:
        super().__init__(f"generation {generation.generation} is still building")
        self.generation = generation


async def start_rebuild(conn: asyncpg.Connection, consumer_prefix: str, target: Offsets) -> Generation:
    """Create the next generation's empty tables and register it as `building`."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", GENERATION_LOCK)
        building = await generations(conn, ["building"])
        if building:
            raise RebuildInProgress(building[0])
        number: int = await conn.fetchval("SELECT coalesce(max(generation), 0) + 1 FROM view_generations")
        await conn.execute("SELECT query_create_generation($1)", number)
        row = await conn.fetchrow(
            f"""INSERT INTO view_generations (generation, state, consumer, rebuild_id, target_offsets)
                VALUES ($1, 'building', $2, $3, $4) RETURNING {_GEN_COLUMNS}""",
            number,
            f"{consumer_prefix}.g{number}-{uuid.uuid4().hex[:8]}",
            uuid.uuid4(),
            offsets_by_topic(target),
        )
        await conn.execute("SELECT pg_notify($1, $2)", GENERATIONS_CHANNEL, str(number))
    return _generation(row)


def applied(position: Offsets, target: Offsets) -> int:
    """How many of the target's offsets the position has passed."""
    return sum(min(position.get(tp, 0), end) for tp, end in target.items())


def reached(position: Offsets, target: Offsets) -> bool:
    return all(position.get(tp, 0) >= end for tp, end in target.items() if end > 0)


def not_behind(new: Offsets, old: Offsets) -> bool:
    return all(new.get(tp, 0) >= pos for tp, pos in old.items())


async def try_switch(conn: asyncpg.Connection, generation: int, topics: Sequence[str], grace: timedelta) -> bool:
    """Make a caught-up building generation current, atomically; False if not yet.

    Caught up = its stored positions reached the end offsets captured at rebuild start. The
    switch further waits (at most `grace`) until it is also not behind the current views on
    any partition, so a reader never sees an order's version go back at the switch. Under
    the exclusive generation lock no batch is in flight, so the positions compared are exact.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", GENERATION_LOCK)
        rows = await generations(conn, LIVE_STATES)
        new = next((g for g in rows if g.generation == generation and g.state == "building"), None)
        old = next((g for g in rows if g.state == "current"), None)
        if new is None or new.target is None:
            return False
        new_pos = await positions(conn, new.consumer)
        if not reached(new_pos, new.target):
            return False
        now: datetime = await conn.fetchval("SELECT now()")
        caught_up_at = new.caught_up_at
        if caught_up_at is None:
            caught_up_at = now
            await conn.execute("UPDATE view_generations SET caught_up_at = $2 WHERE generation = $1", generation, now)
        if old is not None:
            old_pos = {tp: p for tp, p in (await positions(conn, old.consumer)).items() if tp[0] in topics}
            if not not_behind(new_pos, old_pos) and now - caught_up_at < grace:
                return False
            await conn.execute(
                "UPDATE view_generations SET state = 'retired', retired_at = now() WHERE generation = $1",
                old.generation,
            )
        await conn.execute(
            "UPDATE view_generations SET state = 'current', switched_at = now() WHERE generation = $1", generation
        )
        # Facts only the new views have applied so far were never streamed: add them to the feed.
        missing = await Views(conn, generation).unfed()
        await conn.execute("SELECT pg_notify($1, $2)", GENERATIONS_CHANNEL, str(generation))
        await append_feed(conn, generation, missing)  # also NOTIFYs the views channel
    return True


async def drop_retired(conn: asyncpg.Connection, keep: int) -> list[int]:
    """Drop all but the `keep` newest retired generations: schema, inbox rows and positions."""
    retired = await generations(conn, ["retired"])
    doomed = retired[: max(len(retired) - keep, 0)]
    for g in doomed:
        async with conn.transaction():
            await conn.execute(f"DROP SCHEMA IF EXISTS {g.schema} CASCADE")
            await conn.execute("DELETE FROM inbox WHERE consumer = $1", g.consumer)
            await conn.execute("DELETE FROM consumer_positions WHERE consumer = $1", g.consumer)
            await conn.execute("UPDATE view_generations SET state = 'dropped' WHERE generation = $1", g.generation)
    return [g.generation for g in doomed]
