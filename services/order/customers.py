"""The order service's side of crypto-shredding: sealing a placement's address with the
customer's data key, and erasing a customer's personal data by destroying their keys.

Placement and erasure of one customer take turns: each takes the customer's advisory lock in
its order-database transaction (`lock_customers`), so an erasure never destroys a key that a
concurrent placement is sealing with, and never misses an order placed concurrently (it is
committed before the erasure looks, and makes it answer 409). A placement after an erasure
gets a fresh key (the next generation).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from services.order import domain
from services.order.domain import OrderState
from shared.aggregate import facts_of
from shared.contract import Address, OrderPlaced, OrderStatus, PersonalDataErased, customer_stream_id, utc_now
from shared.contract.base import ADDRESS_PERSONAL_FIELDS
from shared.errors import IllegalTransition
from shared.eventstore import EventStore
from shared.ids import caused_by
from shared.keystore import Keystore, KeystoreUnavailable
from shared.personal import DataKey, seal

log = logging.getLogger("services.order.customers")

#: The first key of the two-key advisory locks the order service takes per customer.
_CUSTOMER_LOCK_CLASS = 0x6375  # "cu"
#: Orders that still need their address: erasure waits until none of the customer's is.
NEEDS_ADDRESS = frozenset({OrderStatus.PENDING, OrderStatus.CONFIRMED, OrderStatus.SHIPPED})


async def lock_customers(conn: asyncpg.Connection, customer_ids: Sequence[str]) -> None:
    """The customers' turns, until the transaction ends (placement and erasure take them), in
    one round trip; always in sorted order, so two batches of placements never deadlock."""
    await conn.execute(
        "SELECT count(pg_advisory_xact_lock($1, hashtext(c))) FROM unnest($2::text[]) AS c",
        _CUSTOMER_LOCK_CLASS,
        sorted(set(customer_ids)),
    )


def seal_address(key: DataKey, address: Address) -> Address:
    """The address with its personal fields sealed with the customer's key; the country stays."""
    sealed = {name: seal(key, name, getattr(address, name)) for name in ADDRESS_PERSONAL_FIELDS}
    return Address(**sealed, country=address.country)


def require_keystore(keystore: Keystore | None) -> Keystore:
    if keystore is None:
        raise KeystoreUnavailable("this service has no KEYSTORE_URL")
    return keystore


@dataclass(frozen=True, slots=True)
class Erasure:
    """The answer of an erasure: the fact recording it (the first one, on a repeat)."""

    fact: PersonalDataErased
    version: int
    repeated: bool


#: The type is written into the statement, not bound: only then can the partial index
#: `events_placed_by_customer` (schema.sql) serve it under a generic plan too.
_ORDERS_OF = f"SELECT stream_id FROM events WHERE type = '{OrderPlaced.TYPE}' AND data->>'customer_id' = $1"


async def orders_of(conn: asyncpg.Connection, customer_id: str) -> list[str]:
    """The ids of the customer's orders (from their `order.placed` facts, by index)."""
    return [row["stream_id"] for row in await conn.fetch(_ORDERS_OF, customer_id)]


async def erase_personal_data(
    store: EventStore, keystore: Keystore | None, customer_id: str, *, causation_id: str
) -> Erasure:
    """Destroy the customer's data keys and record `customer.personal_data_erased`.

    IllegalTransition (409 `personal_data_still_needed`) while one of the customer's orders
    still needs its address. Idempotent: a repeat destroys nothing new and appends nothing
    (a key made since, by a new order, is destroyed and recorded by a new fact).
    """
    keys = require_keystore(keystore)
    stream = customer_stream_id(customer_id)
    async with store.transaction() as uow:
        await lock_customers(uow.conn, [customer_id])
        streams = await uow.read_many(await orders_of(uow.conn, customer_id))
        active = sorted(oid for oid, history in streams.items() if _needs_address(domain.fold(facts_of(history))))
        if active:
            raise IllegalTransition(
                "personal_data_still_needed",
                f"customer {customer_id} has {len(active)} order(s) that still need the address: {', '.join(active)}",
            )
        history = await uow.read(stream)
        destroyed = await keys.destroy(customer_id)
        if not destroyed and history:
            last = history[-1]
            assert isinstance(last.data, PersonalDataErased)
            return Erasure(last.data, last.sequence, repeated=True)
        if not destroyed:  # a first erasure whose keys went before its fact could be recorded
            destroyed = await keys.destroyed(customer_id)
        fact = PersonalDataErased(customer_id=customer_id, key_ids=tuple(destroyed), erased_at=utc_now())
        with caused_by(stream, causation_id):
            await uow.append(stream, len(history), [fact])
    log.info("personal data erased", extra={"customer_id": customer_id, "keys_destroyed": len(destroyed)})
    return Erasure(fact, len(history) + 1, repeated=False)


def _needs_address(state: OrderState) -> bool:
    return state.status in NEEDS_ADDRESS
