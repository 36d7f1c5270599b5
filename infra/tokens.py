"""The development signing key and the tokens made with it (`python -m infra token`).

`make up` creates, once, under `<RUN_DIR>/auth/`: `signing-key.pem` (an EC P-256 private key,
mode 0600) and `jwks.json` (its public half with a `kid`), and points every service's
`AUTH_JWKS_FILE` at the JWKS. Whoever holds the private key can mint any role, so it is a
development stand-in for an identity provider, never a production one.

    python -m infra token --customer c-1          # a customer token: sub = c-1, role = customer
    python -m infra token --role staff            # sub = staff, role = staff (or --role admin)
    python -m infra token --customer c-1 --ttl 60 # expires in 60 s (default 3600)
    python -m infra token --init                  # only create the key pair (docker compose's job)

The bare token is printed on the last line of the output. The project's own tools that call
the APIs (the bench, the reliability load, audit and chaos, the tests) sign with the same key,
through `ActingAuth`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import uuid
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shared.auth import Role
from shared.settings import ServiceSettings

SIGNING_KEY = "signing-key.pem"
JWKS = "jwks.json"
_DEFAULTS = ServiceSettings.model_fields


@dataclass(frozen=True)
class DevKeys:
    """A signing key, its `kid` and where its JWKS lives; mints tokens the services accept."""

    private_key: ec.EllipticCurvePrivateKey
    kid: str
    jwks_path: Path
    issuer: str = str(_DEFAULTS["auth_issuer"].default)
    audience: str = str(_DEFAULTS["auth_audience"].default)

    def mint(
        self,
        *,
        role: Role,
        customer_id: str | None = None,
        ttl_s: int = 3600,
        subject: str | None = None,
    ) -> str:
        """A signed ES256 token. A customer token's `sub` is `customer_id` (required); staff and
        admin tokens' `sub` is `subject` (default: the role's name)."""
        if role is Role.CUSTOMER:
            if not customer_id:
                raise ValueError("a customer token needs a customer_id")
            sub = customer_id
        else:
            if customer_id is not None:
                raise ValueError(f"a {role.value} token names no customer")
            sub = subject or role.value
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": sub,
            "role": role.value,
            "iat": now,
            "exp": now + ttl_s,
            "jti": str(uuid.uuid4()),
        }
        return jwt.encode(claims, self.private_key, algorithm="ES256", headers={"kid": self.kid})

    def env(self) -> dict[str, str]:
        """What a service needs in its environment to accept these tokens."""
        return {"AUTH_JWKS_FILE": str(self.jwks_path), "AUTH_ISSUER": self.issuer, "AUTH_AUDIENCE": self.audience}


#: The customer a `POST /orders` acts as when its body names none (invalid input: still a customer).
NO_CUSTOMER = "no-customer"


@dataclass
class ActingAuth(httpx.Auth):
    """httpx auth for the project's tools: a request that brings no Authorization header gets
    a token, as the customer its `POST /orders` body names (placing is a customer's act) and as
    an admin otherwise. Tokens are minted once per identity (valid for `ttl_s`)."""

    keys: DevKeys
    ttl_s: int = 24 * 3600
    _cache: dict[tuple[Role, str | None], str] = field(default_factory=dict)

    def token(self, role: Role, customer_id: str | None = None) -> str:
        if (role, customer_id) not in self._cache:
            self._cache[role, customer_id] = self.keys.mint(role=role, customer_id=customer_id, ttl_s=self.ttl_s)
        return self._cache[role, customer_id]

    def headers(self, role: Role, customer_id: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(role, customer_id)}"}

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if "authorization" not in request.headers:
            if request.method == "POST" and request.url.path.endswith("/orders"):
                token = self.token(Role.CUSTOMER, customer_of(_body_of(request)))
            else:
                token = self.token(Role.ADMIN)
            request.headers["Authorization"] = f"Bearer {token}"
        yield request


def _body_of(request: httpx.Request) -> bytes:
    """The request's body, or b"" while it is still a stream (a streamed body is not read here)."""
    try:
        return request.content
    except httpx.RequestNotRead:
        return b""


def customer_of(content: bytes) -> str:
    """The `customer_id` a POST /orders body names (NO_CUSTOMER if it names no usable one: the
    body is invalid input then, refused whoever sends it)."""
    try:
        body = json.loads(content)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
        return NO_CUSTOMER
    customer = body.get("customer_id") if isinstance(body, dict) else None
    usable = isinstance(customer, str) and 0 < len(customer) <= 200  # longer: a header too big
    return customer if usable and isinstance(customer, str) else NO_CUSTOMER


def stack_auth(run_dir: Path) -> ActingAuth:
    """Tokens for the stack whose run dir is `run_dir` (`make up`, a test's, the bench's)."""
    return ActingAuth(ensure_dev_keys(Path(run_dir) / "auth"))


def ensure_dev_keys(directory: Path) -> DevKeys:
    """The key pair under `directory`, created if absent (idempotent; an existing key is kept)."""
    directory.mkdir(parents=True, exist_ok=True)
    key_path, jwks_path = directory / SIGNING_KEY, directory / JWKS
    if key_path.exists():
        loaded = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_path} is not an EC private key")
        private_key = loaded
    else:
        private_key = ec.generate_private_key(ec.SECP256R1())
        pem = private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
    public_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private_key.public_key()))
    kid = _kid_of(public_jwk)
    jwks = {"keys": [{**public_jwk, "kid": kid, "use": "sig", "alg": "ES256"}]}
    text = json.dumps(jwks, indent=2, sort_keys=True) + "\n"
    if not jwks_path.exists() or jwks_path.read_text() != text:
        tmp = jwks_path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(jwks_path)
    return DevKeys(private_key=private_key, kid=kid, jwks_path=jwks_path)


def _kid_of(public_jwk: dict[str, str]) -> str:
    """The RFC 7638 thumbprint of the public key: the same key always gets the same kid."""
    canonical = json.dumps({k: public_jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    from infra.settings import InfraSettings

    parser = argparse.ArgumentParser(prog="python -m infra token", description=__doc__.splitlines()[0])
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--init", action="store_true", help="only create the key pair (if absent); print no token")
    who.add_argument("--customer", metavar="CUSTOMER_ID", help="a customer token for this customer id")
    who.add_argument("--role", choices=[Role.STAFF.value, Role.ADMIN.value], help="a staff or admin token")
    parser.add_argument("--subject", help="the staff/admin user name (default: the role)")
    parser.add_argument("--ttl", type=int, default=3600, help="seconds until it expires (default 3600)")
    args = parser.parse_args(argv)
    if args.ttl <= 0:
        parser.error("--ttl must be positive")
    if args.customer is not None and args.subject is not None:
        parser.error("--subject is for --role; a customer token's subject is the customer id")
    keys = ensure_dev_keys(Path(InfraSettings().run_dir) / "auth")
    if args.init:
        print(f"development signing key ready: kid {keys.kid}, JWKS {keys.jwks_path}")
        return 0
    if args.customer is not None:
        token = keys.mint(role=Role.CUSTOMER, customer_id=args.customer, ttl_s=args.ttl)
        who_text = f"customer {args.customer}"
    else:
        token = keys.mint(role=Role(args.role), subject=args.subject, ttl_s=args.ttl)
        who_text = f"{args.role} {args.subject or args.role}"
    print(f"# {who_text}, kid {keys.kid}, expires in {args.ttl}s (keys: {keys.jwks_path.parent})", file=sys.stderr)
    print(token)
    return 0
