"""The official AsyncAPI 3.0.0 JSON Schema, from the npm package `@asyncapi/specs` (pinned), offline.

Fetched once with `npm pack` into `.cache/asyncapi-specs/<version>/` (checked against the
registry's integrity hash) and read from there afterwards: validation never touches the network.
`python -m tests.unit.contract.asyncapi_spec` (`make asyncapi-spec`) fetches it ahead of time.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from referencing import Registry
from referencing.jsonschema import DRAFT7

PACKAGE = "@asyncapi/specs"
VERSION = "6.11.1"
# dist.integrity of @asyncapi/specs@6.11.1 in the npm registry: the bytes the tests trust.
INTEGRITY = "sha512-A3WBLqAKGoJ2+6FWFtpjBlCQ1oFCcs4GxF7zsIGvNqp/klGUHjlA3aAcZ9XMMpLGE8zPeYDz2x9FmO6DSuKraQ=="
ASYNCAPI_VERSION = "3.0.0"

ROOT = Path(__file__).resolve().parents[3]
CACHE = ROOT / ".cache" / "asyncapi-specs"
PACKAGE_DIR = CACHE / VERSION
SCHEMA_FILE = PACKAGE_DIR / "schemas" / f"{ASYNCAPI_VERSION}.json"


class SpecUnavailable(RuntimeError):
    """The official schema is neither cached nor fetchable: the contract tests cannot run."""


def ensure() -> Path:
    """The path of the cached 3.0.0.json, fetching the pinned package first if needed."""
    if SCHEMA_FILE.is_file():
        return SCHEMA_FILE
    npm = shutil.which("npm")
    if npm is None:
        raise SpecUnavailable(
            f"npm is needed once to fetch {PACKAGE}@{VERSION} (the official AsyncAPI JSON Schema) into "
            f"{PACKAGE_DIR.relative_to(ROOT)}/: install Node.js + npm, or run `make asyncapi-spec` on a machine "
            "that has it and copy that directory here"
        )
    if PACKAGE_DIR.exists():  # an incomplete copy (say, the schema file deleted by hand): fetch it again
        shutil.rmtree(PACKAGE_DIR)
    CACHE.mkdir(parents=True, exist_ok=True)
    ignore = CACHE / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# downloaded by tests/unit/contract/asyncapi_spec.py\n*\n")
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        work = Path(tmp)
        try:
            subprocess.run(
                [npm, "pack", f"{PACKAGE}@{VERSION}", "--silent"],
                cwd=work,
                check=True,
                capture_output=True,
                text=True,
                timeout=300,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            output = getattr(exc, "stderr", "") or ""
            raise SpecUnavailable(f"`npm pack {PACKAGE}@{VERSION}` failed: {exc}\n{output}") from None
        tarballs = sorted(work.glob("*.tgz"))
        if len(tarballs) != 1:
            raise SpecUnavailable(f"`npm pack` left {len(tarballs)} tarballs, expected one")
        data = tarballs[0].read_bytes()
        got = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
        if got != INTEGRITY:
            raise SpecUnavailable(f"{PACKAGE}@{VERSION} tarball has integrity {got}, expected {INTEGRITY}")
        extracted = work / "extracted"
        with tarfile.open(tarballs[0]) as tar:
            tar.extractall(extracted, filter="data")
        try:
            os.replace(extracted / "package", PACKAGE_DIR)  # atomic: a half-extracted package is never seen
        except OSError:
            if not SCHEMA_FILE.is_file():  # not a concurrent run that got there first
                raise
    if not SCHEMA_FILE.is_file():
        raise SpecUnavailable(f"{PACKAGE}@{VERSION} has no schemas/{ASYNCAPI_VERSION}.json")
    return SCHEMA_FILE


def load() -> tuple[dict[str, Any], Registry[Any]]:
    """(the 3.0.0 schema, a registry resolving every `http://asyncapi.com/...` reference it makes).

    The bundled 3.0.0.json refers to its parts by absolute `$id` (`http://asyncapi.com/definitions/
    3.0.0/info.json`, `.../bindings/kafka/0.5.0/message.json`, the draft-07 meta-schema) and carries
    each of them under `definitions`; they are registered by those ids, so nothing is fetched.
    """
    schema: dict[str, Any] = json.loads(ensure().read_text(encoding="utf-8"))
    resources = [(str(schema["$id"]), DRAFT7.create_resource(schema))]
    for part in schema.get("definitions", {}).values():
        if isinstance(part, dict) and isinstance(part.get("$id"), str):
            resources.append((part["$id"].rstrip("#"), DRAFT7.create_resource(part)))
    # A Registry without `retrieve` fails on any URI it does not hold: it never downloads.
    registry: Registry[Any] = Registry().with_resources(resources)
    return schema, registry.crawl()


if __name__ == "__main__":
    try:
        print(ensure().relative_to(ROOT))
    except SpecUnavailable as exc:
        print(exc, file=sys.stderr)
        sys.exit(1)
