"""`/api/<service>/<path>`: the browser's one origin for the four services' public APIs.

A plain reverse proxy (httpx): method, path, query string, body and the headers a client of
the API sends (`Authorization`, `Idempotency-Key`, `Last-Event-ID`, ...) go through unchanged,
and the answer streams back as it comes, so Server-Sent Events pass live. The UI server adds
no authority of its own: every refusal is the service's.
"""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from shared.rest import error_response

router = APIRouter(tags=["proxy"])

REQUEST_HEADERS = ("authorization", "content-type", "accept", "idempotency-key", "last-event-id", "x-request-id")
RESPONSE_HEADERS = ("content-type", "cache-control", "retry-after", "location", "www-authenticate", "x-accel-buffering")


def upstream_client(timeout_s: float) -> httpx.AsyncClient:
    """One pooled client for every proxied request. Reading has no bound (an SSE stream is
    endless; it ends when the browser goes away); connecting and a whole answer do."""
    return httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, read=None), limits=httpx.Limits(max_connections=200))


@router.api_route("/api/{service}/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], response_model=None)
async def proxy(request: Request, service: str, path: str) -> Any:
    upstreams: dict[str, str] = request.app.state.upstreams
    base = upstreams.get(service)
    if base is None:
        return error_response(404, "unknown_service", f"no service {service!r}; one of {', '.join(upstreams)}")
    client: httpx.AsyncClient = request.app.state.http
    headers = {k: v for k, v in request.headers.items() if k.lower() in REQUEST_HEADERS}
    upstream = client.build_request(
        request.method,
        f"{base}/{path}",
        params=request.url.query or None,
        headers=headers,
        content=await request.body(),
    )
    try:
        response = await client.send(upstream, stream=True)
    except httpx.TimeoutException as exc:
        return error_response(504, "upstream_timeout", f"the {service} service did not answer: {exc!r}")
    except httpx.TransportError as exc:
        return error_response(
            502,
            "upstream_unavailable",
            f"the {service} service cannot be reached: {exc!r}",
            headers={"Retry-After": "1"},
        )
    out = {k: v for k, v in response.headers.items() if k.lower() in RESPONSE_HEADERS}
    if out.get("location", "").startswith("/"):
        out["location"] = f"/api/{service}{out['location']}"
    return StreamingResponse(
        response.aiter_raw(), status_code=response.status_code, headers=out, background=BackgroundTask(response.aclose)
    )
