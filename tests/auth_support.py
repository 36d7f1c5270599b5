"""Bearer tokens for the in-process tests: one development key pair per test session.

`tests/conftest.py` creates the key pair (fixture `auth_keys`, autouse) and points
`AUTH_JWKS_FILE` at it, so every app a test builds, and every service process a test starts
from this environment, accepts its tokens (services started through infra.stack trust their
stack's own key instead: sign for those with infra.tokens.stack_auth). `acting()` gives a
client the identity the tests written before authorization assume (infra.tokens.ActingAuth:
POST /orders as the customer the body names, everything else as an admin). Authorization
itself is tested in tests/unit/test_auth.py and e2e-tests/test_authorization.py.
"""

from __future__ import annotations

from infra.tokens import ActingAuth, DevKeys

_KEYS: list[DevKeys] = []


def set_test_keys(keys: DevKeys | None) -> None:
    _KEYS.clear()
    if keys is not None:
        _KEYS.append(keys)


def acting() -> ActingAuth:
    """Tokens signed with the session's key pair (the `auth_keys` fixture made it)."""
    if not _KEYS:
        raise RuntimeError("no test key pair: the auth_keys fixture (tests/conftest.py) has not run")
    return ActingAuth(_KEYS[0])
