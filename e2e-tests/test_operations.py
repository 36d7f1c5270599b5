"""The query service's operations views (the admin UI's data): consumer lag per group and the
dead letters of every DLQ topic, read from Kafka without joining a group."""

from __future__ import annotations

from typing import Any

from client import SystemClient, bearer, eventually, expect, new_customer, order_body
from test_dlq import COMMANDS, DLQ, send_poison


async def test_consumer_lag_per_group_and_partition(client: SystemClient) -> None:
    placed = await client.place_ok(order_body(new_customer("lag")))
    await client.wait_view(placed["order_id"], lambda v: v["status"] == "CONFIRMED", timeout=30)

    async def every_group() -> dict[str, Any] | None:
        response = await client.consumers()
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        names = {g["group"] for g in body["groups"]}
        wanted = {"order.saga", "payment.commands", "shipping.commands"}
        return body if wanted <= names and any(n.startswith("query.views") for n in names) else None

    body = await eventually(every_group, timeout=30, what="the services' consumer groups")
    assert "committed" in body["note"]
    for group in body["groups"]:
        assert group["partitions"], group
        for p in group["partitions"]:
            assert p["lag"] == max(0, p["end_offset"] - p["committed_offset"]), p
        assert group["lag"] == sum(p["lag"] for p in group["partitions"])


async def test_dead_letters_are_listed_with_their_failure(client: SystemClient) -> None:
    command_id = await send_poison(client, "dlq-api")

    async def listed() -> dict[str, Any] | None:
        response = await client.dead_letters()
        assert response.status_code == 200, response.text
        mine = [d for d in response.json()["items"] if d.get("id") == command_id]
        return mine[0] if mine else None

    letter = await eventually(listed, timeout=60, what=f"dead letter {command_id} in GET /admin/dlq")
    assert letter["dlq"] == DLQ
    assert letter["type"] == "payment.authorize"
    assert letter["consumer"] == "payment.commands"
    assert letter["attempts"] >= 1 and letter["error"]
    assert letter["origin"]["topic"] == COMMANDS
    topics = (await client.dead_letters()).json()["topics"]
    assert DLQ in topics and all(t.endswith(".dlq") for t in topics)

    # Resubmitted after a "fix" (here: none, so the payment consumer dead-letters it once more).
    replayed = expect(await client.replay_dead_letter(DLQ, command_id), 202)
    assert (replayed["message_id"], replayed["topic"], replayed["dlq"]) == (command_id, COMMANDS, DLQ)

    async def twice() -> list[dict[str, Any]] | None:
        mine = [d for d in (await client.dead_letters()).json()["items"] if d.get("id") == command_id]
        return mine if len(mine) == 2 else None

    again = await eventually(twice, timeout=60, what=f"dead letter {command_id} handled again after its replay")
    assert again[1]["offset"] > again[0]["offset"]
    unknown = await client.replay_dead_letter(DLQ, "no-such-message")
    assert (unknown.status_code, unknown.json()["code"]) == (404, "dead_letter_not_found"), unknown.text
    bad_topic = await client.replay_dead_letter("not.a.topic", command_id)
    assert (bad_topic.status_code, bad_topic.json()["field"]) == (422, "topic"), bad_topic.text


async def test_operations_are_for_admins_only(client: SystemClient) -> None:
    customer = client.token("customer", new_customer("ops"))
    for token, status in ((customer, 403), (client.token("staff"), 403), ("", 401)):
        for path in ("/admin/consumers", "/admin/dlq"):
            r = await client.http.get(f"{client.endpoints.query}{path}", headers=bearer(token))
            assert r.status_code == status, (path, r.text)
            assert r.json()["code"] in ("forbidden", "token_missing"), r.text
        refused = await client.replay_dead_letter(DLQ, "any", token=token)
        assert refused.status_code == status, refused.text
