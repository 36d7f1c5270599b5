"""The UI server without a browser: the reverse proxy (headers, status, streaming, errors), the
development sign-in and the static front end. The upstream is an ASGI app in the same process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from infra.tokens import ensure_dev_keys
from services.ui.app import create_app
from services.ui.settings import UiSettings


def upstream_app() -> FastAPI:
    """A stand-in service that echoes what reached it."""
    app = FastAPI()

    @app.api_route("/echo/{rest:path}", methods=["GET", "POST"])
    async def echo(request: Request, rest: str) -> JSONResponse:
        return JSONResponse(
            {
                "method": request.method,
                "path": rest,
                "query": request.url.query,
                "body": (await request.body()).decode(),
                "headers": {k: v for k, v in request.headers.items() if k not in ("host", "content-length")},
            },
            status_code=202 if request.method == "POST" else 200,
            headers={"Location": "/echo/next", "Retry-After": "3", "Set-Cookie": "x=1"},
        )

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def events() -> AsyncIterator[str]:
            yield "retry: 2000\n\n"
            yield "id: 7\ndata: {}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app


@pytest.fixture
async def ui(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = UiSettings(order_url="http://order", query_url="http://query", ui_dev_keys_dir=tmp_path / "auth")
    app = create_app(settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=upstream_app())) as upstream:
        app.state.http = upstream  # what the lifespan would set, pointed at the stand-in
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ui") as client:
            yield client


async def test_proxy_passes_the_request_and_the_api_headers_only(ui: httpx.AsyncClient) -> None:
    r = await ui.post(
        "/api/order/echo/orders/1?a=1&b=two",
        content=b'{"x":1}',
        headers={
            "Authorization": "Bearer t",
            "Idempotency-Key": "k-1",
            "Content-Type": "application/json",
            "Last-Event-ID": "41",
            "Cookie": "secret=1",
            "X-Forwarded-For": "1.2.3.4",
        },
    )
    assert r.status_code == 202
    seen: dict[str, Any] = r.json()
    assert (seen["method"], seen["path"], seen["query"], seen["body"]) == ("POST", "orders/1", "a=1&b=two", '{"x":1}')
    headers = seen["headers"]
    assert headers["authorization"] == "Bearer t"
    assert headers["idempotency-key"] == "k-1"
    assert headers["last-event-id"] == "41"
    assert "cookie" not in headers and "x-forwarded-for" not in headers
    assert r.headers["retry-after"] == "3"
    assert r.headers["location"] == "/api/order/echo/next", "a service-relative Location stays on this origin"
    assert "set-cookie" not in r.headers


async def test_proxy_streams_server_sent_events(ui: httpx.AsyncClient) -> None:
    async with ui.stream("GET", "/api/query/stream") as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache"
        body = "".join([chunk async for chunk in r.aiter_text()])
    assert "id: 7\ndata: {}\n\n" in body


async def test_unknown_service_is_refused_in_the_one_error_shape(ui: httpx.AsyncClient) -> None:
    r = await ui.get("/api/billing/anything")
    assert r.status_code == 404
    assert r.json()["code"] == "unknown_service"
    assert "order" in r.json()["message"]


async def test_an_unreachable_service_is_502_with_retry_after() -> None:
    from infra.stack import free_port

    app = create_app(UiSettings(order_url=f"http://127.0.0.1:{free_port()}", ui_dev_keys_dir=Path("unused")))
    async with httpx.AsyncClient() as http:
        app.state.http = http
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ui") as client:
            r = await client.get("/api/order/orders/x")
    assert r.status_code == 502
    assert r.json()["code"] == "upstream_unavailable"
    assert r.headers["retry-after"] == "1"


async def test_session_mints_a_development_token_and_refuses_bad_input(ui: httpx.AsyncClient, tmp_path: Path) -> None:
    ok = await ui.post("/session", json={"role": "customer", "customer_id": "c-1"})
    assert ok.status_code == 200
    assert ok.json()["development_only"] is True
    assert (ok.json()["role"], ok.json()["customer_id"]) == ("customer", "c-1")
    staff = await ui.post("/session", json={"role": "staff", "customer_id": "c-1"})
    assert staff.json()["customer_id"] is None, "staff and admin name no customer"
    keys = ensure_dev_keys(tmp_path / "auth")  # the key the services trust (its JWKS)
    for session, (sub, role) in ((ok, ("c-1", "customer")), (staff, ("staff", "staff"))):
        claims = jwt.decode(
            session.json()["token"],
            keys.private_key.public_key(),
            algorithms=["ES256"],
            audience=keys.audience,
            issuer=keys.issuer,
        )
        assert (claims["sub"], claims["role"]) == (sub, role)
    for bad, field in (({"role": "root"}, "role"), ({"role": "customer", "customer_id": "a b"}, "customer_id")):
        r = await ui.post("/session", json=bad)
        assert r.status_code == 422
        assert (r.json()["code"], r.json()["field"]) == ("invalid_input", field)


async def test_static_front_end_and_health(ui: httpx.AsyncClient) -> None:
    index = await ui.get("/")
    assert index.status_code == 200 and '<script type="module" src="/app.js">' in index.text
    js = await ui.get("/app.js")
    assert js.headers["content-type"].startswith("text/javascript")
    for page in (index.text, js.text, (await ui.get("/style.css")).text):
        code = page.replace("http://www.w3.org/2000/svg", "")  # the SVG namespace name, not a fetch
        assert "http://" not in code and "https://" not in code, "the page loads nothing from another origin"
    assert (await ui.get("/style.css")).status_code == 200
    assert (await ui.get("/health")).json() == {"status": "ok"}
