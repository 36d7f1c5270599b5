"""Refusals a pure domain raises; the kernel maps them to HTTP statuses or logged non-answers.

Each carries a machine-readable `code` (stable, snake_case) so clients and logs need not
parse messages, and `field` (for InvalidCommand) names the offending input, e.g.
`items[0].quantity` or `shipping_address.country`.
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """Base of every domain refusal. Nothing was decided, so nothing may be appended."""

    http_status: int = 400

    def __init__(self, code: str, message: str | None = None, *, field: str | None = None) -> None:
        self.code = code
        self.message = message or code.replace("_", " ")
        self.field = field
        super().__init__(self.message)

    def to_dict(self) -> dict[str, Any]:
        """The JSON body an API returns for this refusal."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r}, field={self.field!r})"


class InvalidCommand(DomainError):
    """The command breaks a domain rule about its own content (→ HTTP 422)."""

    http_status = 422

    def __init__(self, field: str, message: str, *, code: str = "invalid_field") -> None:
        super().__init__(code, message, field=field)


class IllegalTransition(DomainError):
    """The command is well-formed but not allowed in the aggregate's current state (→ 409)."""

    http_status = 409


class NotFound(DomainError):
    """The command addresses an aggregate that does not exist (→ 404)."""

    http_status = 404
