"""Sealing personal fields (shared/personal.py): what is sealed opens only with its customer's
key and field, reads as erased once the key is gone, and matches the contract's pattern."""

from __future__ import annotations

import re

from shared.personal import (
    ERASED,
    PERSONAL_PATTERN,
    DataKey,
    holds_personal,
    key_ids_in,
    legacy,
    new_secret,
    open_value,
    reveal,
    seal,
)

KEY = DataKey("a" * 32, "cust-1", 1, new_secret())
OTHER = DataKey("b" * 32, "cust-2", 1, new_secret())


def test_a_sealed_value_opens_with_its_key_and_field_only() -> None:
    sealed = seal(KEY, "name", "Ada Lovelace")
    assert "Ada" not in sealed and re.match(PERSONAL_PATTERN, sealed) and holds_personal({"a": [sealed]})
    assert sealed != seal(KEY, "name", "Ada Lovelace"), "a fresh nonce each time"
    assert open_value(sealed, "name", {KEY.key_id: KEY}) == "Ada Lovelace"
    assert open_value(sealed, "city", {KEY.key_id: KEY}) == ERASED, "bound to its field"
    impostor = DataKey(KEY.key_id, "cust-2", 1, KEY.secret)
    assert open_value(sealed, "name", {KEY.key_id: impostor}) == ERASED, "bound to its customer"
    assert open_value(sealed, "name", {KEY.key_id: None}) == ERASED, "its key destroyed"
    assert open_value(sealed, "name", {}) == ERASED, "its key unknown"


def test_legacy_text_and_plain_values() -> None:
    assert re.match(PERSONAL_PATTERN, legacy("1 Main St"))
    assert open_value(legacy("1 Main St"), "line1", {}) == "1 Main St"
    assert open_value("SKU-1", "sku", {}) == "SKU-1"
    assert not re.match(PERSONAL_PATTERN, "Ada") and not holds_personal({"name": "Ada", "n": 1})


def test_reveal_opens_a_document_by_field_name_and_names_its_keys() -> None:
    document = {
        "data": {
            "customer_id": "cust-1",
            "shipping_address": {
                "name": seal(KEY, "name", "Ada"),
                "city": seal(OTHER, "city", "Rome"),
                "country": "FR",
            },
            "items": [{"sku": "A", "quantity": 1}],
        }
    }
    assert key_ids_in(document) == {KEY.key_id, OTHER.key_id}
    shown = reveal(document, {KEY.key_id: KEY, OTHER.key_id: None})
    assert shown["data"]["shipping_address"] == {"name": "Ada", "city": ERASED, "country": "FR"}
    assert shown["data"]["items"] == [{"sku": "A", "quantity": 1}]
