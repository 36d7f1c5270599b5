"""What the query service's routes share besides the kernel Runtime (set on `app.state.query`)."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from fastapi import Request

from services.query.notify import Notifications
from services.query.settings import QuerySettings
from services.query.supervisor import GenerationSupervisor
from shared.runtime import runtime_of


@dataclass
class QueryContext:
    settings: QuerySettings
    notifications: Notifications
    supervisor: GenerationSupervisor


def context_of(request: Request) -> QueryContext:
    context: QueryContext = request.app.state.query
    return context


def pool_of(request: Request) -> asyncpg.Pool:
    return runtime_of(request).pool
