"""What the audit finds: violations (each with its order id) and counts, printable and as JSON."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Violation:
    check: str
    order_id: str | None
    message: str

    @property
    def is_duplicate_effect(self) -> bool:
        return self.check.startswith("duplicate_")

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "order_id": self.order_id, "message": self.message}

    def __str__(self) -> str:
        return f"[{self.check}] order {self.order_id or '-'}: {self.message}"


@dataclass
class AuditReport:
    violations: list[Violation] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def duplicate_effects(self) -> list[Violation]:
        return [v for v in self.violations if v.is_duplicate_effect]

    def by_check(self) -> dict[str, int]:
        return dict(Counter(v.check for v in self.violations).most_common())

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "violations": [v.to_dict() for v in self.violations],
            "violations_by_check": self.by_check(),
            "duplicate_effects": len(self.duplicate_effects),
            "info": self.info,
            "elapsed_s": round(self.elapsed_s, 3),
        }

    def render(self, limit: int = 200) -> str:
        lines = [str(v) for v in self.violations[:limit]]
        if len(self.violations) > limit:
            lines.append(f"... and {len(self.violations) - limit} more")
        i = self.info
        lines.append(
            f"audit: {len(self.violations)} violation(s) {self.by_check() or ''}; "
            f"orders {i.get('orders', 0)} {i.get('orders_by_status', {})}; "
            f"fresh (lag checks skipped) {i.get('fresh_orders', 0)}; "
            f"topic duplicates {i.get('topic_duplicates', {})}; foreign {i.get('foreign_messages', {})}; "
            f"dlq {i.get('dlq', {})}; {self.elapsed_s:.1f}s"
        )
        lines.append("AUDIT PASSED" if self.ok else "AUDIT FAILED")
        return "\n".join(lines)
