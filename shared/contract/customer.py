"""Facts about a customer rather than an order: private to the order service's log (never
published), in the stream `customer-<customer id>`, kept forever like every fact."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from shared.contract.base import Fact, Id


def customer_stream_id(customer_id: str) -> str:
    return f"customer-{customer_id}"


class CustomerFact(Fact, frozen=True, kw_only=True):
    """About a customer: `order_id` is empty (no order is concerned), `customer_id` says whom."""

    TOPIC: ClassVar[str | None] = None

    order_id: str = ""
    customer_id: Id


class PersonalDataErased(CustomerFact, frozen=True, kw_only=True):
    """The customer's data keys were destroyed: every personal field sealed with them (in every
    fact, message and view) reads as erased from now on. `key_ids`: the keys destroyed."""

    TYPE: ClassVar[str] = "customer.personal_data_erased"

    key_ids: tuple[Id, ...]
    erased_at: datetime


CUSTOMER_FACTS: tuple[type[CustomerFact], ...] = (PersonalDataErased,)
