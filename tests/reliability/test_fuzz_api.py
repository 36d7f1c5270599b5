"""Bad input against every service's HTTP API: never a 5xx, and a rejected request appends nothing.

Two parts, both against the real apps served over real HTTP (tests/reliability/live_apps.py):

* schemathesis generates requests from each service's OpenAPI document — valid ones
  (`positive`) and schema-violating ones (`negative`) — for every operation except the
  endless `/stream`, the heavy `/admin/rebuild` and the operational endpoints;
* a hand-written catalogue of the nasty cases: bodies over MAX_BODY_BYTES (declared and
  chunked → 413 or 422), wrong content types, broken/odd JSON, odd unicode (NUL, lone
  surrogates, RTL overrides, astral characters …), huge and non-finite numbers, odd ids in
  paths and query strings.

For the write services the `events` rows are counted before and after each request: a reply
≥ 300, or any GET, must leave the count unchanged. Accepted odd unicode must round-trip.
Bounded: a few hundred requests in total.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

from infra.stack import LocalStack
from infra.tokens import ActingAuth, customer_of
from shared.auth import Role
from tests.auth_support import acting

from .live_apps import LiveApps, live_apps

pytestmark = [
    pytest.mark.integration,
    # schemathesis' own strategies use `random` inside; not ours to fix
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning"),
]

WRITE_SERVICES = ("order", "payment", "shipping")
SKIPPED_PATHS = {"/stream", "/admin/rebuild", "/metrics", "/health", "/health/live", "/health/ready"}
EXAMPLES_PER_OPERATION = 10
MAX_BODY_BYTES = 65536


@pytest.fixture(scope="module")
def apps(stack: LocalStack) -> Iterator[LiveApps]:
    with live_apps(stack) as running:
        yield running


class Probe:
    """Sends requests and records every one that breaks the rules."""

    def __init__(self, apps: LiveApps, service: str) -> None:
        self.apps = apps
        self.service = service
        self.url = apps.services[service].url
        self.problems: list[str] = []
        self.auth = acting()  # POST /orders as the body's customer, the rest as an admin
        self.client = httpx.Client(base_url=self.url, timeout=30, auth=self.auth)
        self.sent = 0

    def count(self) -> int | None:
        return self.apps.events(self.service) if self.service in WRITE_SERVICES else None

    def check(
        self,
        what: str,
        method: str,
        status: int,
        before: int | None,
        after: int | None,
        allowed: tuple[int, ...] | None = None,
    ) -> None:
        self.sent += 1
        # the query service documents 504 `view_behind` for a min_version not reached in time
        documented = status == 504 and self.service == "query" and "min_version=" in what
        what = what if len(what) < 400 else what[:400] + "…"
        if status >= 500 and not documented:
            self.problems.append(f"{status} for {what}")
        if allowed is not None and status not in allowed:
            self.problems.append(f"{status} (expected one of {allowed}) for {what}")
        if before is not None and after is not None and after != before and (status >= 300 or method == "GET"):
            self.problems.append(f"{after - before} event(s) appended by a {status} {method}: {what}")

    def send(
        self, method: str, path: str, *, allowed: tuple[int, ...] | None = None, **kwargs: Any
    ) -> httpx.Response | None:
        before = self.count()
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.TransportError as exc:  # the server dropped the connection instead of answering
            self.problems.append(f"connection dropped ({exc!r}) for {method} {path} {_short(kwargs)}")
            self.client.close()
            self.client = httpx.Client(base_url=self.url, timeout=30, auth=self.auth)
            return None
        self.check(f"{method} {path} {_short(kwargs)}", method, response.status_code, before, self.count(), allowed)
        return response

    def send_oversized(self, method: str, path: str, *, allowed: tuple[int, ...], **kwargs: Any) -> int | None:
        """A body the server may refuse before reading it all: the answer, or None if it reset
        the upload (also a refusal). Either way nothing may be appended."""
        before = self.count()
        with httpx.Client(base_url=self.url, timeout=30, auth=self.auth) as client:  # its own connection: may be cut
            try:
                status: int | None = client.request(method, path, **kwargs).status_code
            except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError):
                status = None
        self.check(f"{method} {path} (oversized)", method, status or 413, before, self.count(), allowed)
        return status

    def close(self) -> None:
        self.client.close()

    def assert_clean(self) -> None:
        assert not self.problems, f"{len(self.problems)} problem(s) in {self.sent} requests:\n" + "\n".join(
            self.problems[:30]
        )


def _short(kwargs: dict[str, Any]) -> str:
    text = repr({k: v for k, v in kwargs.items() if k != "timeout"})
    return text if len(text) < 300 else text[:300] + "…"


# ====================================================================== schemathesis


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["positive", "negative"])
@pytest.mark.parametrize("service", ["order", "payment", "shipping", "query"])
def test_openapi_fuzz(apps: LiveApps, service: str, mode: GenerationMode) -> None:
    live = apps.services[service]
    schema = schemathesis.openapi.from_dict(live.app.openapi())
    probe = Probe(apps, service)
    operations = [r.ok() for r in schema.get_all_operations() if isinstance(r, Ok)]
    operations = [op for op in operations if op.path not in SKIPPED_PATHS]
    assert operations, "no operations to fuzz"
    if mode is GenerationMode.NEGATIVE:
        operations = [op for op in operations if _negatable(op)]
    try:
        for op in operations:

            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                derandomize=True,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=op.as_strategy(generation_mode=mode))
            def fuzz(case: schemathesis.Case[Any]) -> None:
                before = probe.count()
                response = case.call(base_url=live.url, timeout=30, headers=_bearer(probe.auth, case))
                # runs within this iteration (fuzz() is called right below): `op` is the current one
                method = op.method.upper()  # noqa: B023
                probe.check(case.as_curl_command(), method, response.status_code, before, probe.count())

            try:
                fuzz()
            except Unsatisfiable:
                # a negative case exists in theory but hypothesis found none in its budget
                assert mode is GenerationMode.NEGATIVE, f"{op.label}: no valid case could be generated"
    finally:
        probe.close()
    probe.assert_clean()


def _bearer(auth: ActingAuth, case: schemathesis.Case[Any]) -> dict[str, str]:
    """The token a real caller would send: placing as the body's customer, the rest as an admin."""
    if case.method.upper() == "POST" and case.path == "/orders":
        body = case.body if isinstance(case.body, dict) else {}
        return auth.headers(Role.CUSTOMER, customer_of(json.dumps(body, default=str).encode()))
    return auth.headers(Role.ADMIN)


_ANNOTATIONS = {"description", "title", "examples", "example", "default"}


def _free_string(schema: dict[str, Any]) -> bool:
    """A schema every string (or null) satisfies: nothing to violate but the type, and
    schemathesis cannot send a non-string in a path or a header."""
    if "anyOf" in schema:
        return all(_free_string(s) for s in schema["anyOf"])
    return set(schema) - _ANNOTATIONS <= {"type"} and schema.get("type") in ("string", "null")


def _negatable(op: Any) -> bool:
    """Whether a schema-violating request exists (else hypothesis searches in vain for seconds)."""
    return bool(op.body) or any(
        (p.is_required and p.location != "path") or not _free_string(p.definition.get("schema", {}))
        for p in op.iter_parameters()
    )


# ====================================================================== the catalogue

VALID_ORDER: dict[str, Any] = {
    "customer_id": "fuzz-1",
    "items": [{"sku": "SKU-1", "quantity": 2, "unit_price_cents": 1500}],
    "currency": "EUR",
    "shipping_address": {"name": "Ada", "line1": "1 Main St", "city": "Paris", "postal_code": "75001", "country": "FR"},
    "payment_token": "tok_visa",
}

ODD_TEXT = [
    "\u0000",
    "a\u0000b",
    "\ud800",
    "x\udfffy",
    "\u202eevil",
    "a\u200db",
    "😀" * 40,
    "e\u0301",
    "\ufeffbom",
    "\uffff",
    "\U0010ffff",
    "\u3000",
    "\t\n",
    "' OR 1=1 --",
    "%00",
    "<script>",
    "ﷺ" * 30,
]
ODD_NUMBERS = [
    "1e400",
    "-1e400",
    "NaN",
    "Infinity",
    "-Infinity",
    "1.5",
    "1.0",
    "-1",
    "0",
    "true",
    "null",
    '"1"',
    str(2**63),
    str(2**63 - 1),
    str(2**64),
    "9" * 400,
    "1e2",
    "-0",
]
ODD_IDS = [
    "%00",
    "a%00b",
    "x" * 4000,
    "%E2%80%AE%F0%9F%98%80",
    "..%2F..%2Fetc%2Fpasswd",
    "%FF%FE",
    "%20",
    "null",
    "1e400",
    "%ED%A0%80",
    "saga-x",
    "'%3B--",
]


def _json_with(path: tuple[Any, ...], raw_value: str) -> bytes:
    """VALID_ORDER with the value at `path` replaced by a raw JSON token (e.g. 1e400, NaN)."""
    marker = "__RAW__"
    doc: Any = json.loads(json.dumps(VALID_ORDER))
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = marker
    return json.dumps(doc).replace(f'"{marker}"', raw_value).encode()


STRING_FIELDS: list[tuple[Any, ...]] = [
    ("customer_id",),
    ("currency",),
    ("payment_token",),
    ("items", 0, "sku"),
    ("shipping_address", "name"),
    ("shipping_address", "line1"),
    ("shipping_address", "city"),
    ("shipping_address", "postal_code"),
    ("shipping_address", "country"),
]
NUMBER_FIELDS: list[tuple[Any, ...]] = [("items", 0, "quantity"), ("items", 0, "unit_price_cents")]


def test_order_bad_bodies(apps: LiveApps) -> None:
    p = Probe(apps, "order")
    headers = {"Content-Type": "application/json"}
    rejected = (413, 422)
    try:
        # sizes: declared and chunked bodies over MAX_BODY_BYTES
        big = json.dumps({**VALID_ORDER, "customer_id": "x" * (MAX_BODY_BYTES + 10)}).encode()
        p.send_oversized("POST", "/orders", content=big, headers=headers, allowed=(413,))
        p.send_oversized(
            "POST",
            "/orders",
            content=iter([big[i : i + 8192] for i in range(0, len(big), 8192)]),
            headers=headers,
            allowed=rejected,
        )
        p.send_oversized("POST", "/orders", content=b" " * (MAX_BODY_BYTES + 1), headers=headers, allowed=(413,))
        nested = b"[" * 20000 + b"]" * 20000
        p.send("POST", "/orders", content=nested, headers=headers, allowed=(422,))
        # content types
        valid = json.dumps(VALID_ORDER).encode()
        for content_type in (
            "text/plain",
            "application/xml",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/json; charset=utf-16",
            "",
            "*/*",
        ):
            p.send("POST", "/orders", content=valid, headers={"Content-Type": content_type})
        p.send("POST", "/orders", content=b"<order/>", headers={"Content-Type": "application/xml"}, allowed=(422,))
        p.send("POST", "/orders", data={"customer_id": "c"}, allowed=(422,))
        p.send("POST", "/orders", files={"f": ("a.json", valid)}, allowed=(422,))
        # broken JSON
        for body in (
            b"",
            b"null",
            b"[]",
            b"{}",
            b'"text"',
            b'{"customer_id":',
            b"\xff\xfe\xfd",
            b"\xef\xbb\xbf" + valid,
            valid + b"garbage",
            b'{"customer_id": "a", "customer_id": 1}',
            valid.replace(b"EUR", b"EU\\R"),
        ):
            p.send("POST", "/orders", content=body, headers=headers, allowed=(202, 422))
        # odd numbers in integer fields
        for field in NUMBER_FIELDS:
            for token in ODD_NUMBERS:
                p.send("POST", "/orders", content=_json_with(field, token), headers=headers, allowed=(202, 422))
        overflow = {**VALID_ORDER, "items": [{"sku": "a", "quantity": 2, "unit_price_cents": 2**63 - 1}]}
        p.send("POST", "/orders", json=overflow, allowed=(422,))
        p.send("POST", "/orders", json={**VALID_ORDER, "items": [VALID_ORDER["items"][0]] * 101}, allowed=(422,))
        p.send("POST", "/orders", json={**VALID_ORDER, "items": []}, allowed=(422,))
        # odd unicode in every string field: accepted and stored faithfully, or refused with 422
        for field in STRING_FIELDS:
            for text in ODD_TEXT:
                body = json.dumps(_set(VALID_ORDER, field, text)).encode()  # \\u escapes, surrogates too
                r = p.send("POST", "/orders", content=body, headers=headers, allowed=(202, 422))
                if r is not None and r.status_code == 202 and field[0] != "payment_token":
                    got = p.send("GET", f"/orders/{r.json()['order_id']}", allowed=(200,))
                    stored = got.json() if got is not None else {}
                    if _get(stored, field) != text:
                        p.problems.append(f"{field} {text!r} stored as {_get(stored, field)!r}")
        # headers
        for key in ("é" * 3, "k" * 201, "-"):
            p.send(
                "POST",
                "/orders",
                json=VALID_ORDER,
                headers={"Idempotency-Key": key.encode("latin-1")},
                allowed=(202, 422),
            )
        p.send("POST", "/orders", json=VALID_ORDER, headers={"Idempotency-Key": "fuzz-same"}, allowed=(202,))
        p.send(
            "POST",
            "/orders",
            json={**VALID_ORDER, "payment_token": "tok_other"},  # same customer, same key, other body
            headers={"Idempotency-Key": "fuzz-same"},
            allowed=(422,),
        )
        p.send(
            "POST",
            "/orders",
            json=VALID_ORDER,
            headers={"X-Request-ID": ("\u00e9" * 500).encode("latin-1")},
            allowed=(202,),
        )
    finally:
        p.close()
    p.assert_clean()


@pytest.mark.parametrize(
    ("service", "paths"),
    [
        ("order", ["/orders/{id}", "/orders/{id}/events", "/sagas/{id}", "/orders/{id}?as_of_version={n}"]),
        ("payment", ["/payments/{id}", "/payments/{id}/events", "/payments?order_id={id}"]),
        ("shipping", ["/shipments/{id}", "/shipments/{id}/events", "/shipments?order_id={id}"]),
        (
            "query",
            [
                "/orders/{id}",
                "/orders/{id}/timeline",
                "/orders/{id}?min_version={n}&wait_s=0",
                "/orders?customer_id={id}&limit=5",
                "/orders?cursor={id}",
                "/orders?status={id}",
                "/orders?limit={n}",
                "/orders/{id}?min_version=1&wait_s={n}",
            ],
        ),
    ],
)
def test_odd_ids_and_query_strings(apps: LiveApps, service: str, paths: list[str]) -> None:
    p = Probe(apps, service)
    try:
        for template in paths:
            for odd in ODD_IDS:
                for n in ("0", "-1", "abc", "1e400", str(2**31), str(2**64), "NaN"):
                    if "{n}" not in template and n != "0":
                        continue
                    p.send("GET", template.replace("{id}", odd).replace("{n}", n))
    finally:
        p.close()
    p.assert_clean()


@pytest.mark.parametrize(
    ("service", "paths"),
    [
        ("order", ["/orders/{id}/cancel"]),
        ("shipping", ["/shipments/{id}/dispatch", "/shipments/{id}/deliver"]),
    ],
)
def test_odd_ids_in_commands(apps: LiveApps, service: str, paths: list[str]) -> None:
    p = Probe(apps, service)
    try:
        for template in paths:
            for odd in ODD_IDS:
                p.send("POST", template.replace("{id}", odd), allowed=(404, 422))
                p.send(
                    "POST",
                    template.replace("{id}", odd),
                    content=b"\x00" * 100,
                    headers={"Content-Type": "application/json"},
                    allowed=(404, 413, 422),
                )
            p.send_oversized(
                "POST", template.replace("{id}", "x"), content=b"x" * (MAX_BODY_BYTES + 1), allowed=(404, 413)
            )
    finally:
        p.close()
    p.assert_clean()


def _set(doc: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out: Any = json.loads(json.dumps(doc))
    target = out
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert isinstance(out, dict)
    return out


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        try:
            doc = doc[key]
        except (KeyError, IndexError, TypeError):
            return None
    return doc
