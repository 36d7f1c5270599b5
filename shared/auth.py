"""Who is calling: OAuth2 bearer JWTs verified with PyJWT, and the roles that say what they may do.

Every service verifies tokens itself (no gateway): asymmetric ES256 only, the signature with the
key the token's `kid` names in the JWKS (`AUTH_JWKS_FILE` or `AUTH_JWKS_URL`), `iss`
(`AUTH_ISSUER`), `aud` (`AUTH_AUDIENCE`) and `exp`; `sub`, `iat`, `exp` and `role` are required.
`sub` is the customer id of a customer, the user name of staff and admins.

Routes use the FastAPI dependencies `authenticated` (→ Principal, 401 otherwise) and
`require_role(Role.STAFF)` / `require_role(Role.ADMIN)` (403 for a lower role). The kernel
(shared/runtime.py) puts `authenticated` on every router a service declares, so a route is
never anonymous by accident; only /health* (and /metrics from loopback) are open.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import jwt
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shared.errors import DomainError
from shared.settings import ServiceSettings

ALGORITHMS = ["ES256"]
REQUIRED_CLAIMS = ["sub", "iat", "exp", "role", "iss", "aud"]
#: Verified tokens are remembered (an ES256 verification costs ~0.3-0.6 ms of CPU; a client sends
#: the same token with every request) until they expire, at most this long, at most this many.
VERIFIED_TTL_S = 60.0
VERIFIED_MAX = 10_000


class Role(StrEnum):
    CUSTOMER = "customer"
    STAFF = "staff"
    ADMIN = "admin"


#: What each role includes: staff may do what customers' back office does, admin all staff may.
_RANK = {Role.CUSTOMER: 0, Role.STAFF: 1, Role.ADMIN: 2}


@dataclass(frozen=True)
class Principal:
    """The verified caller: `subject` (customer id, or staff/admin user name) and `role`."""

    subject: str
    role: Role

    def has_role(self, role: Role) -> bool:
        """True if this principal's role includes `role` (admin ⊃ staff; customers only themselves)."""
        if role is Role.CUSTOMER:
            return self.role is Role.CUSTOMER
        return _RANK[self.role] >= _RANK[role]

    def may_access(self, customer_id: str | None) -> bool:
        """A customer reaches only its own resources; staff and admins reach every customer's.
        A resource whose customer is unknown (`None`, facts older than the field) is staff's only."""
        if self.role is Role.CUSTOMER:
            return customer_id is not None and customer_id == self.subject
        return True


class AuthError(DomainError):
    """401: no usable token. Carries the `WWW-Authenticate` challenge (RFC 6750)."""

    http_status = 401

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        error = "invalid_request" if code == "token_missing" else "invalid_token"
        description = message.replace('"', "'")
        self.headers = {
            "WWW-Authenticate": f'Bearer realm="events-first", error="{error}", error_description="{description}"'
        }


class Forbidden(DomainError):
    """403: a valid token whose principal may not do this."""

    http_status = 403

    def __init__(self, message: str, *, code: str = "forbidden", field: str | None = None) -> None:
        super().__init__(code, message, field=field)


class TokenVerifier:
    """Verifies bearer tokens against one JWKS (a file read once, or a URL fetched and cached)."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        jwks_file: Path | None = None,
        jwks_url: str | None = None,
        leeway_s: float = 0.0,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.leeway_s = leeway_s
        self._keys: dict[str, jwt.PyJWK] | None = None
        self._client: jwt.PyJWKClient | None = None
        self._verified: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        if jwks_file is not None:
            self._keys = load_jwks(jwks_file)
        elif jwks_url:
            self._client = jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=300, timeout=5)

    @classmethod
    def of(cls, settings: ServiceSettings) -> TokenVerifier:
        jwks_file = Path(settings.auth_jwks_file) if settings.auth_jwks_file else None
        return cls(
            issuer=settings.auth_issuer,
            audience=settings.auth_audience,
            jwks_file=jwks_file,
            jwks_url=settings.auth_jwks_url or None,
            leeway_s=settings.auth_leeway_s,
        )

    async def verify(self, token: str) -> Principal:
        """The token's principal, or AuthError (`token_invalid`, `token_expired`)."""
        now = time.time()
        known = self._verified.get(token)
        if known is not None and now < known[1]:
            return known[0]
        principal, exp = await self._verify(token)
        self._verified[token] = (principal, min(exp + self.leeway_s, now + VERIFIED_TTL_S))
        self._verified.move_to_end(token)
        while len(self._verified) > VERIFIED_MAX:
            self._verified.popitem(last=False)
        return principal

    async def _verify(self, token: str) -> tuple[Principal, float]:
        key = await self._key_for(token)
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=ALGORITHMS,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("token_expired", "the bearer token has expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise AuthError("token_invalid", "the bearer token is not for this audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise AuthError("token_invalid", "the bearer token is from an unknown issuer") from exc
        except jwt.InvalidSignatureError as exc:
            raise AuthError("token_invalid", "the bearer token's signature does not verify") from exc
        except jwt.PyJWTError as exc:
            raise AuthError("token_invalid", f"the bearer token is invalid: {exc}") from exc
        return _principal_of(claims), float(claims["exp"])

    async def _key_for(self, token: str) -> jwt.PyJWK:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthError("token_invalid", "the bearer token is not a JWT") from exc
        if header.get("alg") not in ALGORITHMS:
            raise AuthError("token_invalid", f"the bearer token's algorithm must be one of {ALGORITHMS}")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthError("token_invalid", "the bearer token names no key (kid)")
        if self._keys is not None:
            key = self._keys.get(kid)
        elif self._client is not None:
            key = await asyncio.to_thread(self._client_key, kid)
        else:
            raise AuthError("token_invalid", "this service has no keys to verify tokens (AUTH_JWKS_FILE / URL)")
        if key is None:
            raise AuthError("token_invalid", "the bearer token's key (kid) is not one this service trusts")
        return key

    def _client_key(self, kid: str) -> jwt.PyJWK | None:
        assert self._client is not None
        try:
            return self._client.get_signing_key(kid)
        except jwt.PyJWKClientError:
            return None


def load_jwks(path: Path) -> dict[str, jwt.PyJWK]:
    """The ES256 keys of a JWKS file by `kid` (keys of other kinds are ignored)."""
    document: dict[str, Any] = json.loads(path.read_text())
    keys: dict[str, jwt.PyJWK] = {}
    for entry in document.get("keys", []):
        kid = entry.get("kid")
        if not kid or entry.get("kty") != "EC" or entry.get("crv") != "P-256":
            continue
        keys[kid] = jwt.PyJWK(entry, algorithm="ES256")
    return keys


def _principal_of(claims: dict[str, Any]) -> Principal:
    subject, role = claims.get("sub"), claims.get("role")
    if not isinstance(subject, str) or not subject:
        raise AuthError("token_invalid", "the bearer token's subject (sub) is empty")
    try:
        return Principal(subject=subject, role=Role(str(role)))
    except ValueError as exc:
        raise AuthError("token_invalid", f"the bearer token's role must be one of {[r.value for r in Role]}") from exc


# ---------------------------------------------------------------------- FastAPI dependencies

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    bearerFormat="JWT",
    description="`python -m infra token --customer <id>` or `--role staff|admin` (ES256, see README)",
)


def verifier_of(request: Request) -> TokenVerifier:
    verifier: TokenVerifier = request.app.state.token_verifier
    return verifier


async def authenticated(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    """The caller's verified principal; 401 without a valid bearer token."""
    if credentials is None:
        if request.headers.get("authorization"):
            raise AuthError("token_invalid", "the Authorization header must be `Bearer <token>`")
        raise AuthError("token_missing", "this endpoint needs a bearer token (Authorization: Bearer <token>)")
    return await verifier_of(request).verify(credentials.credentials)


def require_role(role: Role) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """A dependency admitting `role` and the roles above it (staff: staff + admin); 403 otherwise."""

    async def dependency(principal: Annotated[Principal, Depends(authenticated)]) -> Principal:
        if not principal.has_role(role):
            raise Forbidden(f"this needs the role {role.value!r}; the token's role is {principal.role.value!r}")
        return principal

    dependency.__name__ = f"require_{role.value}"
    return dependency


#: A route parameter `principal: Caller` is the verified caller (401 without a valid token).
Caller = Annotated[Principal, Depends(authenticated)]


def require_access(principal: Principal, customer_id: str | None, not_found: DomainError) -> None:
    """Raise `not_found` (404, not 403) when `principal` may not see a customer's resource, so
    a customer cannot learn which ids exist (docs/API.md, "Authorization")."""
    if not principal.may_access(customer_id):
        raise not_found
