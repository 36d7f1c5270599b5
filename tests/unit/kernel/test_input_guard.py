"""Text PostgreSQL cannot store is found, with its location, before it reaches a handler."""

from __future__ import annotations

from shared.runtime import unstorable_text


def test_storable_documents_pass() -> None:
    assert unstorable_text({"a": ["x", 1, 2.5, None, {"b": "ü€😀"}]}, ("body",)) is None


def test_a_nul_character_is_located_to_the_field() -> None:
    found = unstorable_text({"items": [{"sku": "ok"}, {"sku": "a\x00b"}]}, ("body",))
    assert found is not None
    assert found[0] == ("body", "items", 1, "sku")
    assert "U+0000" in found[1]


def test_a_lone_surrogate_and_a_bad_key_are_found_too() -> None:
    surrogate = unstorable_text({"shipping_address": {"name": "\ud800"}}, ("body",))
    assert surrogate is not None and surrogate[0] == ("body", "shipping_address", "name")
    assert "surrogate" in surrogate[1]
    assert unstorable_text({"k\x00": 1}, ("query",)) == (("query",), "text must not contain the NUL character (U+0000)")
