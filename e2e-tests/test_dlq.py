"""Dead letters end to end: a `payment.authorize` whose data breaks its schema is dead-lettered by
the payment service as a CloudEvent that keeps the command whole, `python -m infra dlq list`
(`make dlq`) lists it, and `python -m infra dlq replay` (`make dlq-replay`) puts it back on
`payment.commands`. Bad data cannot be fixed without a code change (the kernel-level test,
tests/integration/test_dlq_replay.py, is the proof that a fixed consumer then handles a replay
exactly once), so here the replay is dead-lettered again, listed with its attempts added up and
its first failure kept, and has no effect. The operator tool runs as a process, like any
operator's; nothing is imported from the system.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from client import SystemClient, eventually, new_customer
from streams import read_topics

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = "payment.commands"
DLQ = f"{COMMANDS}.dlq"


async def operator(client: SystemClient, *args: str) -> tuple[int, str, str]:
    """`python -m infra dlq <args>` against the system's Kafka: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "infra",
        "dlq",
        *args,
        "--bootstrap",
        client.endpoints.kafka,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def bad_authorize(order_id: str, payment_id: str) -> tuple[str, bytes]:
    """(id, value) of a `payment.authorize` with no amount, currency or token: poison."""
    command_id = str(uuid.uuid4())
    document = {
        "specversion": "1.0",
        "id": command_id,
        "source": "/e2e/dlq",
        "type": "payment.authorize",
        "subject": payment_id,
        "time": datetime.now(UTC).isoformat(),
        "datacontenttype": "application/json",
        "correlationid": order_id,
        "causationid": order_id,
        "sequence": "0",
        "schemaversion": "1",
        "data": {"order_id": order_id, "payment_id": payment_id},
    }
    return command_id, json.dumps(document, separators=(",", ":")).encode()


async def send_poison(client: SystemClient, tag: str) -> str:
    """A poison `payment.authorize` (bad_authorize) sent to payment.commands: its id."""
    order_id = new_customer(tag)
    command_id, value = bad_authorize(order_id, f"pay-{order_id}")
    producer = AIOKafkaProducer(bootstrap_servers=client.endpoints.kafka)
    await producer.start()
    try:
        await producer.send_and_wait(COMMANDS, value, key=f"pay-{order_id}".encode())
    finally:
        await producer.stop()
    return command_id


async def letters_of(client: SystemClient, command_id: str, count: int) -> list[dict[str, Any]]:
    """The dead letters of the command once there are `count` of them, oldest first."""

    async def probe() -> list[dict[str, Any]] | None:
        found = [json.loads(m.value or b"") for m in await read_topics(client.endpoints.kafka, [DLQ])]
        mine = [f for f in found if f.get("id") == command_id]
        assert len(mine) <= count, f"more dead letters than expected: {mine}"
        return mine if len(mine) == count else None

    return await eventually(probe, timeout=60, what=f"{count} dead letter(s) of {command_id}")


async def test_a_bad_command_is_dead_lettered_listed_and_replayed_into_the_dlq_again(client: SystemClient) -> None:
    order_id, payment_id = str(uuid.uuid4()), str(uuid.uuid4())
    command_id, value = bad_authorize(order_id, payment_id)
    producer = AIOKafkaProducer(bootstrap_servers=client.endpoints.kafka, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(COMMANDS, value, key=payment_id.encode())
    finally:
        await producer.stop()

    [first] = await letters_of(client, command_id, 1)
    assert {k: v for k, v in first.items() if not k.startswith("dlq")} == json.loads(value), "the command, whole"
    assert (first["dlqconsumer"], first["dlqattempts"], first["dlqtopic"]) == ("payment.commands", "1", COMMANDS)
    assert "payment.authorize v1 data does not match its schema" in first["dlqerror"]

    code, out, err = await operator(client, "list", "--topic", COMMANDS, "--json")
    assert code == 0, err
    [row] = [r for r in json.loads(out) if r["id"] == command_id]
    assert (row["type"], row["consumer"], row["attempts"], row["dlq"]) == ("payment.authorize", COMMANDS, 1, DLQ)
    code, table, err = await operator(client, "list")
    assert code == 0 and command_id in table and "ATTEMPTS" in table.splitlines()[0], err

    code, out, err = await operator(client, "replay", "--topic", COMMANDS, "--id", command_id)
    assert code == 0, err
    assert f"replayed payment.authorize {command_id} from {DLQ}@" in out and f"to {COMMANDS}" in out
    _, again = await letters_of(client, command_id, 2)
    assert again["dlqattempts"] == "2" and again["dlqfirstfailure"] == first["dlqfirstfailure"]
    assert int(again["dlqoffset"]) > int(first["dlqoffset"]), "the replay is a new record"
    code, out, err = await operator(client, "list", "--topic", DLQ, "--json")
    assert [r["attempts"] for r in json.loads(out) if r["id"] == command_id] == [1, 2], err
    assert await client.payments_of(order_id) == [], "a dead letter has no effect"

    code, _, err = await operator(client, "replay", "--topic", COMMANDS, "--id", f"no-such-{command_id}")
    assert code == 1 and "no dead letter with id" in err
