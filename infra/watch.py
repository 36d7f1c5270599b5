"""`python -m infra watch`: print every fact and command on the topics as it arrives.

One line per message: time, topic, type, subject and correlation id, then compact data.
Colours only when stdout is a terminal; Ctrl-C exits cleanly.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from typing import Any, TextIO

from aiokafka import AIOKafkaConsumer

from shared.messages import MessageFormatError, decode
from shared.topics import COMMAND_TOPICS, EVENT_TOPICS, dlq_topic

_COLOURS = {"order": "\033[36m", "payment": "\033[33m", "shipment": "\033[35m", "shipping": "\033[35m"}
_RESET, _DIM, _RED = "\033[0m", "\033[2m", "\033[31m"


def format_line(topic: str, raw: bytes | None, *, colour: bool, width: int = 160) -> str | None:
    """The printed line for one message, or None when it belongs to another order."""
    try:
        env = decode(raw)
    except MessageFormatError as exc:
        text = f"{'?':>12}  {topic:<18} undecodable: {exc}"
        return f"{_RED}{text}{_RESET}" if colour else text
    data = ",".join(f"{k}={_compact(v)}" for k, v in env.data.items() if k != "order_id")
    kind = "cmd " if env.is_command else "fact"
    text = (
        f"{env.time.strftime('%H:%M:%S.%f')[:-3]}  {topic:<18} {kind} {env.type:<22} "
        f"subject={env.subject[:8]} corr={env.correlation_id[:8]}  {data}"
    )[:width]
    if not colour:
        return text
    tint = _COLOURS.get(env.type.split(".")[0], "")
    return f"{tint}{text}{_RESET}" if not topic.endswith(".dlq") else f"{_RED}{text}{_RESET}"


def _compact(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_compact(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return f"[{len(value)}]"
    return str(value)


async def watch(bootstrap: str, topics: list[str], order_id: str | None, from_beginning: bool, out: TextIO) -> None:
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=f"watch-{uuid.uuid4().hex[:8]}",  # a private group: watching never moves anyone's offsets
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
    )
    await consumer.start()
    colour = out.isatty()
    try:
        async for record in consumer:
            if order_id is not None:
                try:
                    if decode(record.value).correlation_id != order_id:
                        continue
                except MessageFormatError:
                    continue
            line = format_line(record.topic, record.value, colour=colour)
            if line is not None:
                print(line, file=out, flush=True)
    finally:
        await consumer.stop()


def main(argv: list[str] | None = None) -> int:
    all_topics = list(EVENT_TOPICS + COMMAND_TOPICS) + [dlq_topic(t) for t in EVENT_TOPICS + COMMAND_TOPICS]
    parser = argparse.ArgumentParser(prog="python -m infra watch", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("topics", nargs="*", help=f"default: all ({', '.join(all_topics)})")
    parser.add_argument("--order", help="only messages of this order (correlation id)")
    parser.add_argument("--from-beginning", action="store_true", help="replay each topic from its start")
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{os.environ.get('KAFKA_PORT', '9092')}"))
    args = parser.parse_args(argv)
    try:
        asyncio.run(watch(args.bootstrap, args.topics or all_topics, args.order, args.from_beginning, sys.stdout))
    except KeyboardInterrupt:
        print("", file=sys.stderr)
    return 0
