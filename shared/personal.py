"""Crypto-shredding of personal data: seal a field with its customer's data key, reveal it at a
read edge, and show it erased once the key is destroyed.

Pure functions, no I/O: the keys come from `shared/keystore.py`. A sealed field is a
self-describing string, `pd1.<key id>.<base64url(nonce ‖ AES-256-GCM ciphertext ‖ tag)>`,
whose associated data binds it to its customer and its field name (`<customer id>/<field>`),
so a value copied into another customer's record or another field does not open. The key id
names the key in the key store, so any reader finds the key without knowing the customer.

`pd0.<base64url(text)>` is legacy clear text: personal fields of facts written before the
contract sealed them (schema version 1) are rewritten so by the upcasters when read. No
producer writes it; it is revealed as the text it holds (it was never encrypted, so erasure
cannot shred it: docs/CONTRACT.md, "Personal data").
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SEALED_VERSION = "pd1"
LEGACY_VERSION = "pd0"
#: What a read edge shows for a field whose key was destroyed (or is unknown to this deployment).
ERASED = "[erased]"

_NONCE_BYTES = 12
_KEY_ID = r"[0-9a-f]{32}"
_B64 = r"[A-Za-z0-9_-]"
#: nonce (12) + tag (16) + at least one byte of text = 29 bytes = at least 39 base64url characters.
SEALED_PATTERN = rf"{SEALED_VERSION}\.{_KEY_ID}\.{_B64}{{39,}}"
LEGACY_PATTERN = rf"{LEGACY_VERSION}\.{_B64}+"
#: The JSON Schema pattern of every personal field: sealed, or legacy text read from a v1 fact.
PERSONAL_PATTERN = rf"^(?:{SEALED_PATTERN}|{LEGACY_PATTERN})$"
_SEALED = re.compile(rf"^{SEALED_VERSION}\.({_KEY_ID})\.({_B64}+)$")
_LEGACY = re.compile(rf"^{LEGACY_VERSION}\.({_B64}+)$")


@dataclass(frozen=True, slots=True)
class DataKey:
    """One customer's data key (256 bits). `generation` grows when a key is made after an erasure."""

    key_id: str
    customer_id: str
    generation: int
    secret: bytes


def new_secret() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _aad(customer_id: str, field: str) -> bytes:
    return f"{customer_id}/{field}".encode()


def seal(key: DataKey, field: str, text: str) -> str:
    """`text` of `field` encrypted with the customer's key, as a self-describing string."""
    nonce = os.urandom(_NONCE_BYTES)
    sealed = AESGCM(key.secret).encrypt(nonce, text.encode(), _aad(key.customer_id, field))
    return f"{SEALED_VERSION}.{key.key_id}.{_b64(nonce + sealed)}"


def legacy(text: str) -> str:
    """Legacy clear text in the personal-field format (for the v1 → v2 upcasters only)."""
    return f"{LEGACY_VERSION}.{_b64(text.encode())}"


def holds_personal(document: Any) -> bool:
    """Whether a JSON-like document holds any personal value (sealed or legacy text)."""
    if isinstance(document, str):
        return bool(_SEALED.match(document) or _LEGACY.match(document))
    if isinstance(document, Mapping):
        return any(holds_personal(item) for item in document.values())
    if isinstance(document, (list, tuple)):
        return any(holds_personal(item) for item in document)
    return False


def key_id_of(value: str) -> str | None:
    """The key id a sealed value names; None for anything else."""
    found = _SEALED.match(value)
    return found.group(1) if found else None


def open_value(value: str, field: str, keys: Mapping[str, DataKey | None]) -> str:
    """The text of a personal value: sealed → decrypted, or ERASED when its key is gone or it
    does not open (another customer's or field's value); legacy → its text; else unchanged."""
    found = _SEALED.match(value)
    if found is None:
        old = _LEGACY.match(value)
        if old is None:
            return value
        try:
            return _unb64(old.group(1)).decode()
        except (binascii.Error, UnicodeDecodeError):
            return value
    key = keys.get(found.group(1))
    if key is None:
        return ERASED
    try:
        raw = _unb64(found.group(2))
        text = AESGCM(key.secret).decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _aad(key.customer_id, field))
    except (InvalidTag, binascii.Error, ValueError):
        return ERASED
    return text.decode()


def key_ids_in(document: Any) -> set[str]:
    """Every key id named by a sealed value anywhere in a JSON-like document."""
    found: set[str] = set()
    _collect(document, found)
    return found


def _collect(node: Any, found: set[str]) -> None:
    if isinstance(node, str):
        key_id = key_id_of(node)
        if key_id is not None:
            found.add(key_id)
    elif isinstance(node, Mapping):
        for item in node.values():
            _collect(item, found)
    elif isinstance(node, (list, tuple)):
        for item in node:
            _collect(item, found)


def reveal(document: Any, keys: Mapping[str, DataKey | None], field: str = "") -> Any:
    """A copy of a JSON-like document with every personal value opened (`open_value`); a
    value's field is the name it has in its object, as it had when sealed."""
    if isinstance(document, str):
        return open_value(document, field, keys) if field else document
    if isinstance(document, Mapping):
        return {name: reveal(item, keys, str(name)) for name, item in document.items()}
    if isinstance(document, (list, tuple)):
        return [reveal(item, keys, field) for item in document]
    return document
