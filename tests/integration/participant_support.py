"""Helpers for the payment and shipping service tests: send commands, watch their answers."""
from __future__ import annotations

import uuid
from typing import Any

import httpx
from prometheus_client import REGISTRY

from infra.stack import LocalStack
from shared.messages import Command, command_to_cloudevent, encode
from tests.integration.kafka_support import produce, read_topic, wait_for


def command_message(
    command_type: str,
    target_id: str,
    data: dict[str, Any],
    *,
    correlation_id: str,
    command_id: uuid.UUID | None = None,
) -> tuple[str, bytes, str]:
    """(Kafka key, CloudEvent bytes, command id) of a command as the saga would send it."""
    command = Command(type=command_type, target_id=target_id, data=data, command_id=command_id or uuid.uuid4())
    document = command_to_cloudevent(command, "/services/order", correlation_id, causation_id=f"cause-{command.command_id}")
    return target_id, encode(document), str(command.command_id)


async def send(stack: LocalStack, topic: str, *messages: tuple[str, bytes, str]) -> None:
    """Produce in the given order (one key → one partition → handled in this order)."""
    await produce(stack.kafka_bootstrap, topic, [(key, value) for key, value, _ in messages])


async def facts_about(stack: LocalStack, topic: str, subject: str, count: int, timeout_s: float = 60.0) -> list[dict[str, Any]]:
    """The CloudEvents on `topic` about `subject`, in topic order, once there are `count` of them."""

    def mine(seen: list[Any]) -> list[dict[str, Any]]:
        return [s.value for s in seen if s.value.get("subject") == subject]

    seen = await read_topic(stack.kafka_bootstrap, topic, until=lambda s: len(mine(s)) >= count, timeout_s=timeout_s)
    found = mine(seen)
    assert len(found) >= count, f"expected {count} facts about {subject} on {topic}, saw {[f['type'] for f in found]}"
    return found


async def state_once(client: httpx.AsyncClient, url: str, **expected: Any) -> dict[str, Any]:
    """Poll GET `url` until the body has the expected fields (bounded), then return it."""
    body: dict[str, Any] = {}

    async def matches() -> bool:
        nonlocal body
        response = await client.get(url)
        if response.status_code != 200:
            return False
        body = response.json()
        return all(body.get(k) == v for k, v in expected.items())

    await wait_for(matches, timeout_s=60)
    return body


def refused_count(aggregate: str, command_type: str, code: str) -> float:
    value = REGISTRY.get_sample_value(
        "commands_refused_total", {"aggregate": aggregate, "type": command_type, "code": code}
    )
    return value or 0.0
