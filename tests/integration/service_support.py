"""Run a service's FastAPI app in-process (lifespan included) against the session's stack."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import httpx
from fastapi import FastAPI

from infra.stack import LocalStack
from tests.auth_support import acting


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Start the app's relay, consumers and loops, and give an HTTP client bound to it (with
    bearer tokens: tests/auth_support.py)."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        auth = acting()
        async with httpx.AsyncClient(
            transport=transport, base_url="http://service.test", timeout=30, auth=auth
        ) as client:
            yield client


@asynccontextmanager
async def scratch_database(stack: LocalStack, prefix: str) -> AsyncIterator[str]:
    """A fresh database for one test; dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(stack.pg_admin_dsn())
    try:
        await admin.execute(f'CREATE DATABASE "{name}" OWNER app')
        yield stack.pg_dsn(name)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
