"""`POST /session`: development sign-in. The UI server mints a short-lived token for the role
(and demo customer) chosen on the sign-in page, with the development signing key that `make up`
keeps in its run directory (UI_DEV_KEYS_DIR). For development only: anyone who can reach the UI
server can become any role, which is exactly what a demo needs and what production must not have.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from infra.tokens import ensure_dev_keys
from services.ui.settings import UiSettings
from shared.auth import Role

router = APIRouter(tags=["session"])

SESSION_TTL_S = 8 * 3600
DEMO_CUSTOMERS = ("demo-ada", "demo-grace", "demo-alan")


class SessionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["customer", "staff", "admin"]
    customer_id: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")


class Session(BaseModel):
    role: str
    customer_id: str | None
    token: str = Field(description="bearer token for every /api call")
    expires_in_s: int
    development_only: bool = True


def mint(settings: UiSettings, role: Role, customer_id: str | None) -> str:
    """A development bearer token signed with the run dir's key (created there if absent, as
    `make up` would: the services trust the JWKS next to it)."""
    return ensure_dev_keys(settings.ui_dev_keys_dir).mint(role=role, customer_id=customer_id, ttl_s=SESSION_TTL_S)


@router.post("/session", response_model=Session, summary="Development sign-in: a token for a demo role")
async def create_session(request: Request, body: SessionRequest) -> Any:
    settings: UiSettings = request.app.state.settings
    customer_id = body.customer_id or DEMO_CUSTOMERS[0] if body.role == "customer" else None
    return Session(
        role=body.role,
        customer_id=customer_id,
        token=mint(settings, Role(body.role), customer_id),
        expires_in_s=SESSION_TTL_S,
    )


@router.get("/session/demo-customers", summary="The demo customers the sign-in page offers")
async def demo_customers() -> list[str]:
    return list(DEMO_CUSTOMERS)
