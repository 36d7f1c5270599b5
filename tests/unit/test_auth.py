"""Token verification (every kind of bad token → 401 with its code) and the Principal's rules."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import APIRouter, FastAPI

from infra.tokens import DevKeys, ensure_dev_keys, main
from shared.auth import AuthError, Caller, Principal, Role, TokenVerifier, require_role
from shared.settings import ServiceSettings

ISSUER, AUDIENCE = "events-first-dev", "events-first"


@pytest.fixture
def keys(tmp_path: Path) -> DevKeys:
    return ensure_dev_keys(tmp_path / "auth")


@pytest.fixture
def verifier(keys: DevKeys) -> TokenVerifier:
    return TokenVerifier(issuer=ISSUER, audience=AUDIENCE, jwks_file=keys.jwks_path)


def _claims(**overrides: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "c-1",
        "role": "customer",
        "iat": now,
        "exp": now + 60,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _signed(keys: DevKeys, *, kid: str | None = "", **claims: object) -> str:
    headers = {"kid": keys.kid if kid == "" else kid} if kid is not None else {}
    return jwt.encode(_claims(**claims), keys.private_key, algorithm="ES256", headers=headers)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def _refusal(verifier: TokenVerifier, token: str) -> AuthError:
    with pytest.raises(AuthError) as caught:
        await verifier.verify(token)
    return caught.value


# ---------------------------------------------------------------- good tokens


async def test_a_minted_token_verifies_to_its_principal(keys: DevKeys, verifier: TokenVerifier) -> None:
    assert await verifier.verify(keys.mint(role=Role.CUSTOMER, customer_id="c-7")) == Principal("c-7", Role.CUSTOMER)
    assert await verifier.verify(keys.mint(role=Role.STAFF)) == Principal("staff", Role.STAFF)
    assert await verifier.verify(keys.mint(role=Role.ADMIN, subject="ada")) == Principal("ada", Role.ADMIN)


def test_dev_keys_are_created_once_and_kept(tmp_path: Path) -> None:
    first = ensure_dev_keys(tmp_path)
    again = ensure_dev_keys(tmp_path)
    assert again.kid == first.kid and (tmp_path / "signing-key.pem").stat().st_mode & 0o777 == 0o600
    jwks = json.loads((tmp_path / "jwks.json").read_text())
    assert [k["kid"] for k in jwks["keys"]] == [first.kid] and "d" not in jwks["keys"][0]  # public only


def test_a_customer_token_needs_its_customer(keys: DevKeys) -> None:
    with pytest.raises(ValueError):
        keys.mint(role=Role.CUSTOMER)
    with pytest.raises(ValueError):
        keys.mint(role=Role.STAFF, customer_id="c-1")


def test_the_cli_prints_the_bare_token_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RUN_DIR", str(tmp_path))
    assert main(["--customer", "c-9", "--ttl", "120"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert (claims["sub"], claims["role"], claims["exp"] - claims["iat"]) == ("c-9", "customer", 120)
    assert main(["--role", "admin"]) == 0
    claims = jwt.decode(capsys.readouterr().out.strip().splitlines()[-1], options={"verify_signature": False})
    assert (claims["sub"], claims["role"]) == ("admin", "admin")
    assert (tmp_path / "auth" / "jwks.json").exists()


# ---------------------------------------------------------------- bad tokens


async def test_an_expired_token_is_token_expired(keys: DevKeys, verifier: TokenVerifier) -> None:
    now = int(time.time())
    error = await _refusal(verifier, _signed(keys, iat=now - 120, exp=now - 60))
    assert error.code == "token_expired" and error.http_status == 401
    assert error.headers["WWW-Authenticate"].startswith('Bearer realm="events-first", error="invalid_token"')


@pytest.mark.parametrize(
    ("claims", "words"),
    [
        ({"aud": "someone-else"}, "audience"),
        ({"iss": "evil"}, "issuer"),
        ({"exp": None}, "exp"),
        ({"iat": None}, "iat"),
        ({"sub": None}, "sub"),
        ({"role": None}, "role"),
        ({"role": "root"}, "role"),
        ({"sub": ""}, "sub"),
    ],
)
async def test_wrong_or_missing_claims_are_token_invalid(
    keys: DevKeys, verifier: TokenVerifier, claims: dict[str, object], words: str
) -> None:
    error = await _refusal(verifier, _signed(keys, **claims))
    assert error.code == "token_invalid" and words in error.message


async def test_a_token_signed_by_another_key_with_the_trusted_kid_does_not_verify(
    keys: DevKeys, verifier: TokenVerifier
) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    forged = jwt.encode(_claims(), other, algorithm="ES256", headers={"kid": keys.kid})
    assert (await _refusal(verifier, forged)).message == "the bearer token's signature does not verify"


async def test_a_tampered_payload_does_not_verify(keys: DevKeys, verifier: TokenVerifier) -> None:
    header, _, signature = _signed(keys).split(".")
    tampered = f"{header}.{_b64(json.dumps(_claims(role='admin')).encode())}.{signature}"
    assert (await _refusal(verifier, tampered)).code == "token_invalid"


async def test_an_unknown_or_missing_kid_is_refused(keys: DevKeys, verifier: TokenVerifier) -> None:
    assert "not one this service trusts" in (await _refusal(verifier, _signed(keys, kid="nope"))).message
    assert "names no key" in (await _refusal(verifier, _signed(keys, kid=None))).message


async def test_alg_none_is_refused(keys: DevKeys, verifier: TokenVerifier) -> None:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": keys.kid}).encode())
    unsigned = f"{header}.{_b64(json.dumps(_claims(role='admin')).encode())}."
    assert "algorithm" in (await _refusal(verifier, unsigned)).message


async def test_hs256_signed_with_the_public_key_is_refused(keys: DevKeys, verifier: TokenVerifier) -> None:
    """The classic confusion: an HMAC "signed" with the (public) verification key."""
    public = keys.jwks_path.read_bytes()
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": keys.kid}).encode())
    payload = _b64(json.dumps(_claims(role="admin")).encode())
    mac = hmac.new(public, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    assert "algorithm" in (await _refusal(verifier, f"{header}.{payload}.{_b64(mac)}")).message


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "Bearer x", "é.é.é"])
async def test_garbage_is_token_invalid(verifier: TokenVerifier, garbage: str) -> None:
    assert (await _refusal(verifier, garbage)).code == "token_invalid"


async def test_without_keys_every_token_is_refused(keys: DevKeys) -> None:
    bare = TokenVerifier.of(ServiceSettings(auth_jwks_file="", auth_jwks_url=""))
    assert (await _refusal(bare, keys.mint(role=Role.ADMIN))).code == "token_invalid"


# ---------------------------------------------------------------- principals


def test_customers_reach_only_their_own_and_staff_reach_all() -> None:
    customer, staff, admin = Principal("c-1", Role.CUSTOMER), Principal("s", Role.STAFF), Principal("a", Role.ADMIN)
    assert customer.may_access("c-1") and not customer.may_access("c-2") and not customer.may_access(None)
    assert staff.may_access("c-2") and staff.may_access(None) and admin.may_access("c-1")


def test_roles_include_the_ones_below_except_customer() -> None:
    customer, staff, admin = Principal("c-1", Role.CUSTOMER), Principal("s", Role.STAFF), Principal("a", Role.ADMIN)
    assert [p.has_role(Role.STAFF) for p in (customer, staff, admin)] == [False, True, True]
    assert [p.has_role(Role.ADMIN) for p in (customer, staff, admin)] == [False, False, True]
    assert [p.has_role(Role.CUSTOMER) for p in (customer, staff, admin)] == [True, False, False]


# ---------------------------------------------------------------- the FastAPI dependencies


@pytest.fixture
def app(keys: DevKeys) -> Iterator[FastAPI]:
    from shared.runtime import ServiceDefinition, build_app

    router = APIRouter()

    @router.get("/who")
    async def who(principal: Caller) -> dict[str, str]:
        return {"sub": principal.subject, "role": principal.role.value}

    from fastapi import Depends

    @router.post("/admin-only", dependencies=[Depends(require_role(Role.ADMIN))])
    async def admin_only() -> dict[str, bool]:
        return {"ok": True}

    settings = ServiceSettings(auth_jwks_file=str(keys.jwks_path))
    yield build_app(ServiceDefinition(name="authtest", settings=settings, routers=[router]))


async def test_the_kernel_answers_401_and_403_in_the_one_error_shape(app: FastAPI, keys: DevKeys) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        missing = await http.get("/who")
        assert missing.status_code == 401 and missing.json()["code"] == "token_missing"
        assert missing.headers["www-authenticate"].startswith("Bearer ")
        malformed = await http.get("/who", headers={"Authorization": "Basic abc"})
        assert malformed.status_code == 401 and malformed.json()["code"] == "token_invalid"
        staff = {"Authorization": f"Bearer {keys.mint(role=Role.STAFF)}"}
        assert (await http.get("/who", headers=staff)).json() == {"sub": "staff", "role": "staff"}
        refused = await http.post("/admin-only", headers=staff)
        assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
        admin = {"Authorization": f"Bearer {keys.mint(role=Role.ADMIN)}"}
        assert (await http.post("/admin-only", headers=admin)).status_code == 200
        schema = (await http.get("/openapi.json")).json()
        assert schema["components"]["securitySchemes"]["bearer"] == {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": schema["components"]["securitySchemes"]["bearer"]["description"],
        }
        assert schema["paths"]["/who"]["get"]["security"] == [{"bearer": []}]
        assert "security" not in schema["paths"]["/health"]["get"]


async def test_metrics_are_open_to_loopback_and_staffs_from_elsewhere(app: FastAPI, keys: DevKeys) -> None:
    local = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    remote = httpx.ASGITransport(app=app, client=("10.1.2.3", 40000))
    async with (
        httpx.AsyncClient(transport=local, base_url="http://t") as here,
        httpx.AsyncClient(transport=remote, base_url="http://t") as there,
    ):
        assert (await here.get("/metrics")).status_code == 200
        assert (await there.get("/metrics")).status_code == 401
        customer = {"Authorization": f"Bearer {keys.mint(role=Role.CUSTOMER, customer_id='c-1')}"}
        assert (await there.get("/metrics", headers=customer)).status_code == 403
        staff = {"Authorization": f"Bearer {keys.mint(role=Role.STAFF)}"}
        assert (await there.get("/metrics", headers=staff)).status_code == 200


async def test_a_verified_token_is_remembered_until_it_expires_or_a_minute_passes(
    keys: DevKeys, verifier: TokenVerifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shared.auth

    calls: list[str] = []
    real = verifier._verify

    async def counting(token: str) -> tuple[Principal, float]:
        calls.append(token)
        return await real(token)

    monkeypatch.setattr(verifier, "_verify", counting)
    long_lived, short_lived = keys.mint(role=Role.STAFF, ttl_s=3600), keys.mint(role=Role.STAFF, ttl_s=30)
    for _ in range(3):
        await verifier.verify(long_lived)
        await verifier.verify(short_lived)
    assert calls == [long_lived, short_lived]  # verified once each
    now = time.time()
    # (only the cache's clock moves: PyJWT's own still says both tokens are valid)
    monkeypatch.setattr(shared.auth.time, "time", lambda: now + 45)  # past the short one's exp
    await verifier.verify(long_lived)
    await verifier.verify(short_lived)
    assert calls == [long_lived, short_lived, short_lived]  # the expired entry was not used
    monkeypatch.setattr(shared.auth.time, "time", lambda: now + 120)  # past the minute
    await verifier.verify(long_lived)
    assert calls[-1] == long_lived and len(calls) == 4
