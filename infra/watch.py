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
import os
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TextIO

import msgspec
from aiokafka import AIOKafkaConsumer

from shared.contract import (
    ALL_TOPICS,
    DLQ_TOPICS,
    DeadLetterFormatError,
    Envelope,
    Message,
    MessageFormatError,
    OrderFact,
    PaymentCommand,
    PaymentFact,
    ShipmentFact,
    ShippingCommand,
    decode,
    messages_on,
    read_dead_letter,
)

_TINTS: tuple[tuple[tuple[type[Message], ...], str], ...] = (
    ((OrderFact,), "\033[36m"),
    ((PaymentFact, PaymentCommand), "\033[33m"),
    ((ShipmentFact, ShippingCommand), "\033[35m"),
)
_RESET, _RED = "\033[0m", "\033[31m"
_RAW_SHOWN = 120  # bytes of an undecodable value shown on its line


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
        letter = read_dead_letter(raw)
    except DeadLetterFormatError as exc:
        return _undecodable_line(topic, raw, exc, colour=colour)
    origin, partition, offset = letter.origin
    text = (
        f"{letter.dlqlastfailure[11:23]:>12}  {topic:<18} dead {letter.type:<22} id={letter.id[:8]} "
        f"by={letter.dlqconsumer} from={origin}[{partition}]@{offset} subject={letter.subject[:8]} "
        f"attempts={letter.dlqattempts}  error={letter.dlqerror}"
    )[:width]
    return f"{_RED}{text}{_RESET}" if colour else text


def correlation_of(topic: str, raw: bytes | None) -> str | None:
    """The correlation id of a message (of the original one for a dead letter), if it has one."""
    try:
        if topic in DLQ_TOPICS:
            return read_dead_letter(raw).correlationid or None  # the original's attribute, kept
        return decode(raw).correlation_id
    except (MessageFormatError, DeadLetterFormatError):
        return None


def _compact(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_compact(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return f"[{len(value)}]"
    return str(value)


@dataclass(frozen=True)
class Shown:
    """A message to print now; `gap`: the id of the cause it was printed without (past the bound)."""

    topic: str
    raw: bytes | None
    gap: str | None = None


@dataclass(frozen=True)
class _Held:
    id: str
    cause: str
    due: float
    message: Shown


class CausalHold:
    """`--order` shows an order's flow causally, as the query service's SSE feed does: a message
    whose cause (its `causationid`, of a type `causationtype` names) is a message of a watched
    topic is printed only after that cause, or, if the cause has not been printed `wait_s` later,
    printed anyway with a marker. Messages caused by a request, a saga timer, or a message of a
    topic not watched, dead letters and undecodable values are printed at once. Time is given
    by the caller (monotonic seconds)."""

    def __init__(self, topics: Iterable[str], wait_s: float) -> None:
        self.cause_types = frozenset(cls.TYPE for topic in topics for cls in messages_on(topic))
        self.wait_s = wait_s
        self._printed: set[str] = set()
        self._held: list[_Held] = []  # in the order they were held

    def offer(self, topic: str, raw: bytes | None, now: float) -> list[Shown]:
        """What to print now that this message arrived (it, and what waited for it), in order."""
        message = Shown(topic, raw)
        if topic in DLQ_TOPICS:
            return [message]
        try:
            env = decode(raw)
        except MessageFormatError:
            return [message]
        cause = env.causation_id
        if env.causation_type in self.cause_types and cause != env.id and cause not in self._printed:
            self._held.append(_Held(env.id, cause, now + self.wait_s, message))
            return []
        return self._print(env.id, message)

    def due(self, now: float) -> list[Shown]:
        """What to print past the bound: for each overdue message, the first of its chain of held
        causes (marked), then what waited for it."""
        out: list[Shown] = []
        while overdue := next((h for h in self._held if h.due <= now), None):
            root, seen = overdue, {overdue.id}
            while (up := next((h for h in self._held if h.id == root.cause and h.id not in seen), None)) is not None:
                root = up
                seen.add(up.id)
            self._held.remove(root)
            out += self._print(root.id, Shown(root.message.topic, root.message.raw, gap=root.cause))
        return out

    def next_due(self) -> float | None:
        return min((h.due for h in self._held), default=None)

    def _print(self, message_id: str, message: Shown) -> list[Shown]:
        out = [message]
        self._printed.add(message_id)
        for waiting in [h for h in self._held if h.cause == message_id]:
            if waiting in self._held:  # not yet released further down this chain
                self._held.remove(waiting)
                out += self._print(waiting.id, waiting.message)
        return out


def shown_line(shown: Shown, *, colour: bool, wait_s: float) -> str:
    line = format_line(shown.topic, shown.raw, colour=colour)
    if shown.gap is None:
        return line
    marker = f"  [causal gap: cause {shown.gap[:8]} not seen within {wait_s:g}s]"
    return line + (f"{_RED}{marker}{_RESET}" if colour else marker)


async def _watch_order(
    consumer: AIOKafkaConsumer, topics: list[str], order_id: str, wait_s: float, colour: bool, out: TextIO
) -> None:
    hold = CausalHold(topics, wait_s)

    def show(messages: list[Shown]) -> None:
        for shown in messages:
            print(shown_line(shown, colour=colour, wait_s=wait_s), file=out, flush=True)

    while True:
        due = hold.next_due()
        timeout = 1.0 if due is None else max(due - time.monotonic(), 0.0)
        batches = await consumer.getmany(timeout_ms=int(timeout * 1000) + 1)
        for records in batches.values():
            for record in records:
                if correlation_of(record.topic, record.value) == order_id:
                    show(hold.offer(record.topic, record.value, time.monotonic()))
        show(hold.due(time.monotonic()))


async def watch(
    bootstrap: str,
    topics: list[str],
    order_id: str | None,
    from_beginning: bool,
    out: TextIO,
    causal_wait_s: float = 5.0,
) -> None:
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
        if order_id is not None:
            await _watch_order(consumer, topics, order_id, causal_wait_s, colour, out)
            return
        async for record in consumer:
            print(format_line(record.topic, record.value, colour=colour), file=out, flush=True)
    finally:
        await consumer.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra watch", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("topics", nargs="*", help=f"default: all ({', '.join(ALL_TOPICS)})")
    parser.add_argument(
        "--order", help="only messages of this order (correlation id), each after its cause (see --causal-wait)"
    )
    parser.add_argument(
        "--causal-wait",
        type=float,
        default=5.0,
        metavar="S",
        help="with --order: how long a message waits for its cause to be printed first (default 5 s); "
        "past it, it is printed marked [causal gap: ...]",
    )
    parser.add_argument("--from-beginning", action="store_true", help="replay each topic from its start")
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{os.environ.get('KAFKA_PORT', '9092')}"),
    )
    args = parser.parse_args(argv)
    try:
        topics = args.topics or list(ALL_TOPICS)
        asyncio.run(watch(args.bootstrap, topics, args.order, args.from_beginning, sys.stdout, args.causal_wait))
    except KeyboardInterrupt:
        print("", file=sys.stderr)
    return 0
