"""Bearer tokens for the in-process tests: one development key pair per test session.

`tests/conftest.py` creates the key pair (fixture `auth_keys`, autouse) and points
`AUTH_JWKS_FILE` at it, so every app a test builds accepts its tokens. `ActingAuth` gives a
client the identity the pre-authorization tests assume: `POST /orders` as the customer the body
names, everything else as an admin. Authorization itself is tested in tests/unit/test_auth.py
and e2e-tests/test_authorization.py.
"""

from __future__ import annotations

import json
from collections.abc import Generator

import httpx

from infra.tokens import DevKeys
from shared.auth import Role

_KEYS: list[DevKeys] = []


def set_test_keys(keys: DevKeys | None) -> None:
    _KEYS.clear()
    if keys is not None:
        _KEYS.append(keys)


def test_keys() -> DevKeys:
    """The session's key pair (the `auth_keys` fixture made it)."""
    if not _KEYS:
        raise RuntimeError("no test key pair: the auth_keys fixture (tests/conftest.py) has not run")
    return _KEYS[0]


test_keys.__test__ = False  # type: ignore[attr-defined]  # not a test, despite its name


class ActingAuth(httpx.Auth):
    """A bearer token on each request that brings none (see the module docstring)."""

    def __init__(self, keys: DevKeys) -> None:
        self.keys = keys
        self._cache: dict[tuple[Role, str | None], str] = {}

    def token(self, role: Role, customer_id: str | None = None) -> str:
        if (role, customer_id) not in self._cache:
            self._cache[role, customer_id] = self.keys.mint(role=role, customer_id=customer_id)
        return self._cache[role, customer_id]

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if "authorization" not in request.headers:
            if request.method == "POST" and request.url.path == "/orders":
                token = self.token(Role.CUSTOMER, _customer_of(request.content))
            else:
                token = self.token(Role.ADMIN)
            request.headers["Authorization"] = f"Bearer {token}"
        yield request


def _customer_of(content: bytes) -> str:
    try:
        body = json.loads(content)
    except ValueError:
        return "test-no-customer"
    customer = body.get("customer_id") if isinstance(body, dict) else None
    return customer if isinstance(customer, str) and customer else "test-no-customer"
