"""Codec micro-benchmark: why the contract's messages are msgspec Structs.

Every fact is encoded once when it is appended and decoded, validated against its schema, by
every reader (the store when a stream is loaded, every consumer of its topic), so the codec
sits on the hottest paths of the system. This measures one `order.placed` (three lines and an
address, the largest fact) through three codecs that keep the same contract:

* msgspec: the contract's own `OrderPlaced` Struct (`msgspec.json` encoder / typed decoder);
* pydantic v2: equivalent models with the same constraints (its JSON serializer / `model_validate_json`);
* dataclasses + orjson: `orjson.dumps`, and `orjson.loads` followed by hand-written validation.

Each must produce the same JSON value and refuse the same invalid input (a quantity of 0, a
lower-case currency); they are checked to before anything is timed. Figures are microseconds
per operation: the median of REPEATS runs of a loop sized to take ~0.2 s.

`python -m bench.codecs` prints a table and writes bench/results/codecs.json.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import statistics
import sys
import timeit
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Annotated, Any

import msgspec
import orjson
import pydantic

from services.order.customers import seal_address
from shared.contract import MAX_CENTS, Address, OrderLine, OrderPlaced
from shared.personal import DataKey

RESULTS = Path(__file__).with_name("results")
REPEATS = 7
MIN_LOOP_S = 0.2

PLACED = OrderPlaced(
    order_id="5f0c6b2e-0c1a-4b7a-a3c5-7e9d1f2b3c4d",
    customer_id="c-1",
    currency="EUR",
    total_cents=4599 + 2500 + 870,
    items=(
        OrderLine(sku="SKU-1", quantity=2, unit_price_cents=1500),
        OrderLine(sku="SKU-2", quantity=1, unit_price_cents=1599),
        OrderLine(sku="SKU-BOOK", quantity=2, unit_price_cents=1250),
        OrderLine(sku="SKU-PEN", quantity=3, unit_price_cents=290),
    ),
    shipping_address=seal_address(
        DataKey("0" * 32, "cust-1", 1, bytes(32)),
        Address(name="Ada Lovelace", line1="12 St James's Sq", city="London", postal_code="SW1Y 4JH", country="GB"),
    ),
)
#: The same value with one line's quantity at 0: every codec must refuse it.
INVALID = msgspec.json.encode(PLACED).replace(b'"quantity":1,', b'"quantity":0,', 1)


# ------------------------------------------------------------------------ pydantic v2

Id = Annotated[str, pydantic.Field(min_length=1)]
Cents = Annotated[int, pydantic.Field(ge=0, le=MAX_CENTS, strict=True)]
Personal = Annotated[str, pydantic.Field(min_length=1)]


class _Frozen(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="ignore")


class PydanticLine(_Frozen):
    sku: Annotated[str, pydantic.Field(min_length=1)]
    quantity: Annotated[int, pydantic.Field(ge=1, le=1_000_000, strict=True)]
    unit_price_cents: Cents


class PydanticAddress(_Frozen):
    name: Personal
    line1: Personal
    city: Personal
    postal_code: Personal
    country: Annotated[str, pydantic.Field(pattern="^[A-Z]{2}$")]


class PydanticPlaced(_Frozen):
    order_id: Id
    customer_id: Id
    items: tuple[PydanticLine, ...]
    currency: Annotated[str, pydantic.Field(pattern="^[A-Z]{3}$")]
    total_cents: Cents
    shipping_address: PydanticAddress


# ------------------------------------------------------------------ dataclasses + orjson

_CURRENCY, _COUNTRY = re.compile("^[A-Z]{3}$"), re.compile("^[A-Z]{2}$")
# Without slots: orjson serialises a slotted dataclass about four times slower.


@dataclass(frozen=True)
class PlainLine:
    sku: str
    quantity: int
    unit_price_cents: int


@dataclass(frozen=True)
class PlainAddress:
    name: str
    line1: str
    city: str
    postal_code: str
    country: str


@dataclass(frozen=True)
class PlainPlaced:
    order_id: str
    customer_id: str
    items: tuple[PlainLine, ...]
    currency: str
    total_cents: int
    shipping_address: PlainAddress


def _text(doc: dict[str, Any], key: str) -> str:
    value = doc[key]
    if type(value) is not str or not value:
        raise ValueError(f"{key}: a non-empty string")
    return value


def _int(doc: dict[str, Any], key: str, low: int, high: int) -> int:
    value = doc[key]
    if type(value) is not int or not low <= value <= high:
        raise ValueError(f"{key}: an integer in [{low}, {high}]")
    return value


def _matching(doc: dict[str, Any], key: str, pattern: re.Pattern[str]) -> str:
    value = _text(doc, key)
    if not pattern.match(value):
        raise ValueError(f"{key}: {pattern.pattern}")
    return value


def plain_decode(raw: bytes) -> PlainPlaced:
    """orjson, then the contract's checks written by hand (what a dataclass codec needs)."""
    doc = orjson.loads(raw)
    if type(doc) is not dict or type(doc.get("items")) is not list or type(doc.get("shipping_address")) is not dict:
        raise ValueError("not an order.placed object")
    address = doc["shipping_address"]
    return PlainPlaced(
        order_id=_text(doc, "order_id"),
        customer_id=_text(doc, "customer_id"),
        items=tuple(
            PlainLine(
                sku=_text(line, "sku"),
                quantity=_int(line, "quantity", 1, 1_000_000),
                unit_price_cents=_int(line, "unit_price_cents", 0, MAX_CENTS),
            )
            for line in doc["items"]
        ),
        currency=_matching(doc, "currency", _CURRENCY),
        total_cents=_int(doc, "total_cents", 0, MAX_CENTS),
        shipping_address=PlainAddress(
            name=_text(address, "name"),
            line1=_text(address, "line1"),
            city=_text(address, "city"),
            postal_code=_text(address, "postal_code"),
            country=_matching(address, "country", _COUNTRY),
        ),
    )


# ------------------------------------------------------------------------ measuring


@dataclass(frozen=True)
class Codec:
    name: str
    value: object  # the message in this codec's own types
    encode: Callable[[], bytes]
    decode: Callable[[bytes], object]
    refuses: tuple[type[Exception], ...]


def codecs() -> list[Codec]:
    wire = msgspec.json.encode(PLACED)
    encoder, decoder = msgspec.json.Encoder(), msgspec.json.Decoder(OrderPlaced)
    pyd = PydanticPlaced.model_validate_json(wire)
    plain = plain_decode(wire)
    return [
        Codec(
            "msgspec Struct (the contract)",
            PLACED,
            lambda: encoder.encode(PLACED),
            decoder.decode,
            (msgspec.ValidationError,),
        ),
        Codec(
            "pydantic v2 model",
            pyd,
            lambda: PydanticPlaced.__pydantic_serializer__.to_json(pyd),
            PydanticPlaced.model_validate_json,
            (pydantic.ValidationError,),
        ),
        Codec("dataclass + orjson", plain, lambda: orjson.dumps(plain), plain_decode, (ValueError,)),
    ]


def check_same_contract(codec: Codec) -> None:
    """Before timing: the codec writes the contract's JSON, reads it back equal, refuses bad input."""
    encoded = codec.encode()
    if json.loads(encoded) != json.loads(msgspec.json.encode(PLACED)):
        raise AssertionError(f"{codec.name} writes another JSON value")
    if codec.decode(encoded) != codec.value:
        raise AssertionError(f"{codec.name} does not read back what it wrote")
    for bad in (INVALID, encoded.replace(b'"EUR"', b'"eur"')):
        try:
            codec.decode(bad)
        except codec.refuses:
            continue
        raise AssertionError(f"{codec.name} accepted an invalid order.placed: {bad[:80]!r}")


def per_op_us(fn: Callable[[], object], repeats: int = REPEATS, min_loop_s: float = MIN_LOOP_S) -> float:
    """Median microseconds per call over `repeats` loops of ~`min_loop_s` each."""
    timer = timeit.Timer(fn)
    number, took = timer.autorange()
    number = max(1, int(number * min_loop_s / max(took, 1e-9)))
    return statistics.median(timer.repeat(repeat=repeats, number=number)) / number * 1e6


def measure(repeats: int = REPEATS, min_loop_s: float = MIN_LOOP_S) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for codec in codecs():
        check_same_contract(codec)
        encoded = codec.encode()
        encode_us = per_op_us(codec.encode, repeats, min_loop_s)
        decode_us = per_op_us(functools.partial(codec.decode, encoded), repeats, min_loop_s)
        rows.append(
            {
                "codec": codec.name,
                "encode_us": round(encode_us, 3),
                "decode_validate_us": round(decode_us, 3),
                "bytes": len(encoded),
            }
        )
    fastest = min(r["decode_validate_us"] for r in rows)
    for r in rows:
        r["decode_validate_vs_fastest"] = round(r["decode_validate_us"] / fastest, 2)
    return {
        "benchmark": "order.placed encode and decode+validate (python -m bench.codecs)",
        "message": f"order.placed, {len(PLACED.items)} lines + address",
        "method": f"median of {repeats} loops of ~{min_loop_s}s each (timeit), microseconds per operation; "
        "before timing each codec is checked to write the same JSON value, read it back equal "
        "and refuse a quantity of 0 and a lower-case currency",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg": [round(x, 2) for x in os.getloadavg()],
        },
        "versions": {name: version(name) for name in ("msgspec", "pydantic", "pydantic-core", "orjson")},
        "results": rows,
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"{result['message']}; {result['method'].split(';')[0]}")
    print(f"{'codec':<32} {'encode µs':>10} {'decode+validate µs':>19} {'bytes':>6}")
    for r in result["results"]:
        print(f"{r['codec']:<32} {r['encode_us']:>10.2f} {r['decode_validate_us']:>19.2f} {r['bytes']:>6}")


def main() -> None:
    result = measure()
    print_table(result)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "codecs.json"
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
