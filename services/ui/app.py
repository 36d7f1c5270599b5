"""Composition of the UI server: static front end, development sign-in, the API proxy, /health."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.requests import Request

from services.ui import proxy, session
from services.ui.settings import UiSettings
from shared.logs import configure_logging
from shared.runtime import invalid_input

STATIC_DIR = Path(__file__).with_name("static")


def create_app(settings: UiSettings | None = None) -> FastAPI:
    settings = settings or UiSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with proxy.upstream_client(settings.ui_proxy_timeout_s) as http:
            app.state.http = http
            yield

    app = FastAPI(
        title="events-first web UI",
        description="Task-based UI: static files, development sign-in and one origin for the services' APIs.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.upstreams = settings.upstreams()

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return invalid_input(exc)

    @app.get("/health", tags=["health"], summary="The UI server answers (the services have their own /health)")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    app.include_router(session.router)
    app.include_router(proxy.router)
    app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="static")
    return app


def main() -> None:
    from shared.lifecycle import serve

    settings = UiSettings()
    configure_logging("ui", settings.log_level)
    serve(create_app(settings), settings)
