"""The contract in machine-readable form, generated from the Structs of shared/contract/.

`python -m shared.contract.publish` (`make contract`) writes docs/schemas/ (JSON Schema 2020-12 of
every message's `data`, of the dead letter and of the CloudEvents envelope), docs/asyncapi.yaml
(AsyncAPI 3.0.0) and docs/EVENTS.md (the catalogue). `--check` writes nothing and exits 1 listing
the files that differ: the code is the declaration, the documents can only follow it.

Everything is built in a fixed order and dumped without anything time- or host-dependent, so the
same code always gives the same bytes (the drift test and `--check` compare them).
"""

from __future__ import annotations

from shared.contract.publish.asyncapi import (
    asyncapi_document,
    asyncapi_yaml,
)
from shared.contract.publish.catalogue import (
    events_markdown,
)
from shared.contract.publish.files import (
    check,
    generate,
    main,
    write,
)
from shared.contract.publish.naming import (
    API_TITLE,
    API_VERSION,
    ASYNCAPI_FILE,
    CLOUDEVENTS_CONTENT_TYPE,
    DEAD_LETTER_NAME,
    DEAD_LETTER_VERSION,
    ENVELOPE_ATTRIBUTES,
    ENVELOPE_NAME,
    ENVELOPE_REQUIRED,
    EVENTS_FILE,
    INFO_DESCRIPTION,
    JSON_SCHEMA_DIALECT,
    KAFKA_BINDING_VERSION,
    PRIVATE_NOTE,
    REGENERATE,
    ROOT,
    SCHEMAS_DIR,
    SERVICE_DESCRIPTIONS,
)
from shared.contract.publish.schemas import (
    data_schema,
    dead_letter_schema,
    envelope_schema,
    schema_files,
)

__all__ = [
    "API_TITLE",
    "API_VERSION",
    "ASYNCAPI_FILE",
    "CLOUDEVENTS_CONTENT_TYPE",
    "DEAD_LETTER_NAME",
    "DEAD_LETTER_VERSION",
    "ENVELOPE_ATTRIBUTES",
    "ENVELOPE_NAME",
    "ENVELOPE_REQUIRED",
    "EVENTS_FILE",
    "INFO_DESCRIPTION",
    "JSON_SCHEMA_DIALECT",
    "KAFKA_BINDING_VERSION",
    "PRIVATE_NOTE",
    "REGENERATE",
    "ROOT",
    "SCHEMAS_DIR",
    "SERVICE_DESCRIPTIONS",
    "asyncapi_document",
    "asyncapi_yaml",
    "check",
    "data_schema",
    "dead_letter_schema",
    "envelope_schema",
    "events_markdown",
    "generate",
    "main",
    "schema_files",
    "write",
]
