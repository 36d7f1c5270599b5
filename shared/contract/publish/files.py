"""Writing and checking the generated files, and the command line (`python -m shared.contract.publish`)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from shared.contract.publish.asyncapi import (
    asyncapi_yaml,
)
from shared.contract.publish.catalogue import (
    events_markdown,
)
from shared.contract.publish.naming import (
    ASYNCAPI_FILE,
    EVENTS_FILE,
    REGENERATE,
    ROOT,
    SCHEMAS_DIR,
)
from shared.contract.publish.schemas import (
    schema_files,
)

# The first line of the package's docstring (the module run as `python -m shared.contract.publish`).
DESCRIPTION = "The contract in machine-readable form, generated from the Structs of shared/contract/."


def generate() -> dict[str, str]:
    """Every generated file, path relative to the repository root -> its exact text."""
    files = {
        f"{SCHEMAS_DIR}/{name}": json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
        for name, schema in schema_files().items()
    }
    files[ASYNCAPI_FILE] = asyncapi_yaml()
    files[EVENTS_FILE] = events_markdown()
    return files


def _strays(root: Path, files: dict[str, str]) -> list[str]:
    """Schema files nobody declares any more (docs/schemas/ belongs to the generator)."""
    found = (root / SCHEMAS_DIR).glob("*.json") if (root / SCHEMAS_DIR).is_dir() else []
    return sorted(rel for p in found if (rel := p.relative_to(root).as_posix()) not in files)


def check(root: Path = ROOT) -> list[str]:
    """The drifted files: missing, different from what the code generates, or no longer generated."""
    files = generate()
    drift = []
    for rel, text in files.items():
        path = root / rel
        if not path.is_file():
            drift.append(f"{rel} (missing)")
        elif path.read_bytes() != text.encode():
            drift.append(f"{rel} (differs)")
    drift += [f"{rel} (no longer generated)" for rel in _strays(root, files)]
    return drift


def write(root: Path = ROOT) -> list[str]:
    """Bring the files up to date; the ones changed (unchanged files are not touched)."""
    files = generate()
    changed = []
    for rel, text in files.items():
        path = root / rel
        data = text.encode()
        if not path.is_file() or path.read_bytes() != data:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            changed.append(rel)
    for rel in _strays(root, files):
        (root / rel).unlink()
        changed.append(rel)
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.contract.publish", description=DESCRIPTION)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 listing the drifted files")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root (default: this checkout)")
    args = parser.parse_args(argv)
    if args.check:
        drift = check(args.root)
        for line in drift:
            print(line, file=sys.stderr)
        if drift:
            print(f"the published contract is out of date: {REGENERATE}", file=sys.stderr)
            return 1
        print("the published contract is up to date")
        return 0
    changed = write(args.root)
    for rel in changed:
        print(f"wrote {rel}")
    print(f"{len(changed)} file(s) changed" if changed else "nothing to change")
    return 0
