"""REST API of erasure: `DELETE /customers/{customer_id}/personal-data` (crypto-shredding).

The customer's data keys are destroyed, so every personal field sealed with them, in every
fact, message, topic and view, reads as `[erased]` from then on; the fact
`customer.personal_data_erased` records it (stream `customer-<customer_id>`). Amounts,
statuses and every other customer are untouched.

Who may erase: an admin, or the customer themself (the right to be forgotten is theirs to
exercise). Staff may not; a customer naming another customer is 403 (the id is theirs to name,
so nothing is revealed), checked before the key store or the log is touched.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Header, Path, Request
from pydantic import BaseModel, Field

from services.order.customers import erase_personal_data
from shared.auth import Caller, Forbidden, Principal, Role
from shared.contract import PersonalDataErased
from shared.rest import error_responses, request_causation_id
from shared.runtime import runtime_of

router = APIRouter(tags=["customers"])


class ErasureView(BaseModel):
    """The erasure as recorded (on a repeat: the fact recorded first, `repeated` true)."""

    customer_id: str
    erased_at: datetime
    key_ids: list[str] = Field(description="the data keys destroyed")
    version: int = Field(description="the fact's version in the stream `customer-<customer_id>`")
    repeated: bool = Field(description="true when the data was already erased and nothing new was destroyed")


@router.delete(
    "/customers/{customer_id}/personal-data",
    response_model=ErasureView,
    responses={
        **error_responses(403, 409),
        503: {"description": "the key store cannot be reached: nothing was destroyed or appended (`Retry-After`)"},
    },
    summary=f"Erase a customer's personal data (destroys their data keys, appends {PersonalDataErased.TYPE})",
    description="200 once the keys are destroyed; repeating it is 200 again with `repeated: true`. 409 "
    "`personal_data_still_needed` while one of the customer's orders is PENDING, CONFIRMED or SHIPPED. "
    "Afterwards the name, street, city and postal code read `[erased]` everywhere; a new order gets a new key.",
)
async def erase(
    request: Request,
    principal: Caller,
    customer_id: str = Path(min_length=1, max_length=200, description="the customer whose personal data to erase"),
    x_request_id: str | None = Header(default=None, alias="X-Request-ID"),
) -> ErasureView:
    ensure_may_erase(principal, customer_id)
    runtime = runtime_of(request)
    erasure = await erase_personal_data(
        runtime.store, runtime.keystore, customer_id, causation_id=request_causation_id(x_request_id)
    )
    return ErasureView(
        customer_id=erasure.fact.customer_id,
        erased_at=erasure.fact.erased_at,
        key_ids=list(erasure.fact.key_ids),
        version=erasure.version,
        repeated=erasure.repeated,
    )


def ensure_may_erase(principal: Principal, customer_id: str) -> None:
    """Admins erase anyone's data, a customer only their own; staff nobody's (403)."""
    if principal.role is Role.ADMIN:
        return
    if principal.role is Role.CUSTOMER and principal.subject == customer_id:
        return
    if principal.role is Role.CUSTOMER:
        raise Forbidden(
            "a customer may erase only their own personal data", code="customer_mismatch", field="customer_id"
        )
    raise Forbidden(
        f"erasure needs the role 'admin' or the customer's own token; the token's role is {principal.role.value!r}"
    )
