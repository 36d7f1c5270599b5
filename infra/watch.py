"""`python -m infra watch`: print every fact and command on the topics as it arrives.

One line per message: time, topic, type, subject and correlation id, then compact data.
Messages are decoded with the contract's codec, so what is shown is what a service sees (an
older schema version already upcast). A message that does not decode is shown raw with the
reason, never skipped and never fatal; a dead letter shows its origin and error. Colours only
when stdout is a terminal; Ctrl-C exits cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
import uuid
from typing import Any, TextIO

import msgspec
from aiokafka import AIOKafkaConsumer

from shared.contract import (
    ALL_TOPICS,
    DLQ_TOPICS,
    DeadLetter,
    Envelope,
    Message,
    MessageFormatError,
    OrderFact,
    PaymentCommand,
    PaymentFact,
    ShipmentFact,
    ShippingCommand,
    decode,
)

_TINTS: tuple[tuple[tuple[type[Message], ...], str], ...] = (
    ((OrderFact,), "\033[36m"),
    ((PaymentFact, PaymentCommand), "\033[33m"),
    ((ShipmentFact, ShippingCommand), "\033[35m"),
)
_RESET, _RED = "\033[0m", "\033[31m"
_RAW_SHOWN = 120  # bytes of an undecodable value shown on its line
_dead_letter_decoder = msgspec.json.Decoder(DeadLetter)


def format_line(topic: str, raw: bytes | None, *, colour: bool, width: int = 160) -> str:
    """The printed line for one message, whatever its value holds."""
    if topic in DLQ_TOPICS:
        return _dead_letter_line(topic, raw, colour=colour, width=width)
    try:
        env = decode(raw)
    except MessageFormatError as exc:
        return _undecodable_line(topic, raw, exc, colour=colour)
    text = _envelope_text(topic, env)[:width]
    if not colour:
        return text
    tint = next((t for kinds, t in _TINTS if isinstance(env.data, kinds)), "")
    return f"{tint}{text}{_RESET}"


def _envelope_text(topic: str, env: Envelope[Message]) -> str:
    fields = msgspec.to_builtins(env.data)
    data = ",".join(f"{k}={_compact(v)}" for k, v in fields.items() if k != "order_id")
    kind = "cmd " if env.is_command else "fact"
    return (
        f"{env.time.strftime('%H:%M:%S.%f')[:-3]}  {topic:<18} {kind} {env.type:<22} "
        f"subject={env.subject[:8]} corr={env.correlation_id[:8]}  {data}"
    )


def _undecodable_line(topic: str, raw: bytes | None, error: Exception, *, colour: bool) -> str:
    shown = "None" if raw is None else repr(raw[:_RAW_SHOWN]) + ("…" if len(raw) > _RAW_SHOWN else "")
    text = f"{'?':>12}  {topic:<18} undecodable: {error}  raw={shown}"  # never cut: the reason matters
    return f"{_RED}{text}{_RESET}" if colour else text


def _dead_letter_line(topic: str, raw: bytes | None, *, colour: bool, width: int) -> str:
    try:
        letter = _dead_letter_decoder.decode(raw or b"")
    except msgspec.MsgspecError as exc:
        return _undecodable_line(topic, raw, exc, colour=colour)
    origin = letter.origin
    text = (
        f"{letter.failed_at[11:23]:>12}  {topic:<18} dead {letter.consumer:<22} "
        f"from={origin.topic}[{origin.partition}]@{origin.offset} key={(origin.key or '')[:8]}  error={letter.error}"
    )[:width]
    return f"{_RED}{text}{_RESET}" if colour else text


def correlation_of(topic: str, raw: bytes | None) -> str | None:
    """The correlation id of a message (of the original one for a dead letter), if it decodes."""
    try:
        if topic in DLQ_TOPICS:
            raw = base64.b64decode(_dead_letter_decoder.decode(raw or b"").value_base64)
        return decode(raw).correlation_id
    except (MessageFormatError, msgspec.MsgspecError, ValueError):  # ValueError: bad base64
        return None


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
            if order_id is not None and correlation_of(record.topic, record.value) != order_id:
                continue
            print(format_line(record.topic, record.value, colour=colour), file=out, flush=True)
    finally:
        await consumer.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra watch", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("topics", nargs="*", help=f"default: all ({', '.join(ALL_TOPICS)})")
    parser.add_argument("--order", help="only messages of this order (correlation id)")
    parser.add_argument("--from-beginning", action="store_true", help="replay each topic from its start")
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{os.environ.get('KAFKA_PORT', '9092')}"),
    )
    args = parser.parse_args(argv)
    try:
        asyncio.run(watch(args.bootstrap, args.topics or list(ALL_TOPICS), args.order, args.from_beginning, sys.stdout))
    except KeyboardInterrupt:
        print("", file=sys.stderr)
    return 0
