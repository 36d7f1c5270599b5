"""`python -m infra dlq list|replay`: the dead letters of the topics, and resubmitting one after a fix.

`list` reads every dead-letter topic (or one) from its beginning to its current end with a
consumer in no group, so it never commits or moves anyone's offsets, and prints a table (or JSON).
`replay` puts ONE dead letter's original message back on its topic: the original key and the
original value (the bytes of an undecodable one exactly; a CloudEvent without its `dlq*`
attributes). Consumers are idempotent by message id: a consumer that dead-lettered it handles it
once (its inbox says 'dead_lettered'); one that handled it, or a replay already handled, drops it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from typing import TextIO

import msgspec

from shared.contract import DLQ_TOPICS
from shared.dead_letter_topics import (
    DeadLetterRecord,
    DlqError,
    Replayed,
    dlq_of,
    read_dead_letters,
    replay,
)

__all__ = ["DeadLetterRecord", "DlqError", "Replayed", "dlq_of", "main", "read_dead_letters", "replay", "table"]

_ERROR_SHOWN = 100  # characters of an error shown in the table (all of it with --json)


def table(records: Sequence[DeadLetterRecord]) -> str:
    """The listing: one row per dead letter, per topic."""
    header = ("DLQ TOPIC", "OFFSET", "ID", "TYPE", "CONSUMER", "ATTEMPTS", "LAST FAILURE", "ERROR")
    rows = [header]
    for r in records:
        offset = str(r.offset) if r.partition == 0 else f"{r.partition}@{r.offset}"
        if r.letter is None:
            rows.append((r.dlq, offset, "?", "?", "?", "?", "?", "not a dead letter"))
            continue
        letter = r.letter
        error = " ".join(letter.dlqerror.split())
        error = error if len(error) <= _ERROR_SHOWN else error[: _ERROR_SHOWN - 1] + "…"
        rows.append(
            (
                r.dlq,
                offset,
                letter.id,
                letter.type,
                letter.dlqconsumer,
                letter.dlqattempts,
                letter.dlqlastfailure,
                error,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return "\n".join("  ".join([*(c.ljust(w) for c, w in zip(row, widths)), row[-1]]).rstrip() for row in rows)


def _default_bootstrap() -> str:
    return os.environ.get("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{os.environ.get('KAFKA_PORT', '9092')}")


def main(argv: list[str] | None = None, out: TextIO = sys.stdout) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra dlq", description=(__doc__ or "").splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--bootstrap",
        default=_default_bootstrap(),
        help="Kafka (default: KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:KAFKA_PORT)",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    listing = sub.add_parser("list", parents=[common], help="list the dead letters of every DLQ topic (or one)")
    listing.add_argument("--topic", help="a DLQ topic or the topic whose DLQ to list (default: all)")
    listing.add_argument("--json", action="store_true", help="one JSON array, every attribute and the whole error")
    again = sub.add_parser("replay", parents=[common], help="resubmit one dead letter's original message to its topic")
    again.add_argument("--topic", required=True, help="the DLQ topic or the topic whose DLQ holds it")
    again.add_argument("--id", required=True, dest="message_id", help="the dead letter's id (its message id)")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "list":
            dlqs = [dlq_of(args.topic)] if args.topic else list(DLQ_TOPICS)
            records = asyncio.run(read_dead_letters(args.bootstrap, dlqs))
            if args.json:
                print(msgspec.json.encode([r.as_json() for r in records]).decode(), file=out)
            elif records:
                print(table(records), file=out)
            else:
                print(f"no dead letters in {', '.join(dlqs)}", file=out)
            return 0
        done = asyncio.run(replay(args.bootstrap, args.topic, args.message_id))
    except DlqError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"replayed {done.message_type} {done.message_id} from {done.dlq}@{done.dlq_offset} "
        f"to {done.topic} partition {done.partition} offset {done.offset}",
        file=out,
    )
    return 0
