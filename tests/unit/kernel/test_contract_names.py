"""Message type and topic names are spelled once, in `shared.contract`: everywhere else the code
names them through the contract (`PaymentCaptured.TYPE`, `PAYMENT_EVENTS`), so renaming or
versioning a message can never miss a copy of its name."""

from __future__ import annotations

import ast
from pathlib import Path

from shared.contract import ALL_TOPICS, MESSAGES

ROOT = Path(__file__).resolve().parents[3]
SCANNED = ("services", "shared", "infra", "reliability", "bench")
CONTRACT = ROOT / "shared" / "contract"
CONTRACT_NAMES = frozenset(MESSAGES) | frozenset(ALL_TOPICS)


def python_files() -> list[Path]:
    return sorted(
        path
        for top in SCANNED
        for path in (ROOT / top).rglob("*.py")
        if not path.is_relative_to(CONTRACT) and ".venv" not in path.parts
    )


def contract_literals(path: Path, root: Path = ROOT) -> list[str]:
    """`file:line: 'name'` for every string constant equal to a contract message or topic name."""
    tree = ast.parse(path.read_text(), str(path))
    hits = sorted(
        (node.lineno, node.col_offset, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in CONTRACT_NAMES
    )
    return [f"{path.relative_to(root)}:{line}: {value!r}" for line, _, value in hits]


def test_the_scan_sees_the_code_and_would_find_a_literal(tmp_path: Path) -> None:
    files = python_files()
    assert len(files) > 50 and all(top in {p.relative_to(ROOT).parts[0] for p in files} for top in SCANNED)
    sample = tmp_path / "sample.py"
    sample.write_text('TOPIC = "payment.events"\nif kind == "order.placed":\n    pass\nok = f"{x}.events"\n')
    assert contract_literals(sample, tmp_path) == ["sample.py:1: 'payment.events'", "sample.py:2: 'order.placed'"]


def test_no_message_type_or_topic_name_is_spelled_outside_the_contract() -> None:
    found = [hit for path in python_files() for hit in contract_literals(path)]
    assert not found, (
        f"{len(found)} message type / topic name literal(s) outside shared/contract/; "
        "use the contract's classes (`PaymentCaptured.TYPE`) and topic constants instead:\n  " + "\n  ".join(found)
    )
