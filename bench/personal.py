"""Micro-benchmark of crypto-shredding's cost per order (shared/personal.py).

An order pays for encryption once, when it is placed (its address's four personal fields
sealed with AES-256-GCM), and for decryption on every read that shows them (`GET /orders/{id}`
opens the four fields again). Measured here, CPU only, in microseconds per order:

* seal: the address sealed (`seal_address`, 4 × AES-GCM encrypt with a fresh nonce);
* reveal: the order's view opened (`reveal`: walk the document, 4 × AES-GCM decrypt);
* key ids: finding the key ids a document names (`key_ids_in`, what a read edge does first);
* decode + validate of a sealed `order.placed` (the contract's pattern check on every read of
  the fact, and the longer strings; `make bench-codecs` measures the same message's codecs).

A key-store round trip (one query per placement and one per read) comes on top; it is the
cost of one PostgreSQL query on the same machine and is what `make bench` sees end to end.

`python -m bench.personal` (`make bench-personal`) prints a table and writes
bench/results/personal.json.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import msgspec

from bench.codecs import PLACED, per_op_us
from services.order.customers import seal_address
from shared.contract import Address, OrderPlaced
from shared.personal import DataKey, key_ids_in, new_secret, reveal

RESULTS = Path(__file__).with_name("results")
KEY = DataKey("0" * 32, "cust-1", 1, new_secret())
CLEAR = Address(name="Ada Lovelace", line1="12 St James's Sq", city="London", postal_code="SW1Y 4JH", country="GB")


def measure() -> dict[str, Any]:
    sealed = seal_address(KEY, CLEAR)
    view = {"order_id": PLACED.order_id, "shipping_address": msgspec.to_builtins(sealed), "status": "PENDING"}
    assert reveal(view, {KEY.key_id: KEY})["shipping_address"] == msgspec.to_builtins(CLEAR)
    placed_sealed = msgspec.json.encode(msgspec.structs.replace(PLACED, shipping_address=sealed))
    placed_clear = msgspec.json.encode(msgspec.structs.replace(PLACED, shipping_address=CLEAR))
    decoder = msgspec.json.Decoder(OrderPlaced)
    rows = {
        "seal_address_us": per_op_us(functools.partial(seal_address, KEY, CLEAR)),
        "reveal_view_us": per_op_us(functools.partial(reveal, view, {KEY.key_id: KEY})),
        "key_ids_in_view_us": per_op_us(functools.partial(key_ids_in, view)),
        "decode_placed_sealed_us": per_op_us(functools.partial(decoder.decode, placed_sealed)),
    }
    return {
        "benchmark": "crypto-shredding cost per order (python -m bench.personal)",
        "method": "median of 7 loops of ~0.2 s each (timeit), microseconds per operation, one CPU",
        "bytes": {"order.placed sealed": len(placed_sealed), "order.placed clear": len(placed_clear)},
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg": [round(x, 2) for x in os.getloadavg()],
        },
        "results": {k: round(v, 3) for k, v in rows.items()},
    }


def main() -> None:
    result = measure()
    for name, us in result["results"].items():
        print(f"{name:<36} {us:>8.2f} µs")
    print(f"order.placed bytes: {result['bytes']}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "personal.json"
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
