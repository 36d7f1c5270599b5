"""The reduced, bounded chaos run of `make test`: four faults under a low load on a private stack.

SIGKILL of the order service, SIGKILL + restart of Kafka, an immediate PostgreSQL shutdown +
restart, and poison messages on every topic — each under ~7 s of load at 5 orders/s, then
recovery and the full audit (`reliability.audit`). Every fault must lose no acknowledged order,
duplicate no effect, and recover (all orders settled, audit clean) within the timeout.
The full run is `make chaos` (all faults, 50 orders/s).
"""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from reliability.chaos import (
    ALL_FAULTS,
    REDUCED_FAULTS,
    ChaosConfig,
    FaultResult,
    ProxiedKafkaBroker,
    build_parser,
    main,
    render_table,
    run_chaos,
)
from reliability.chaos.poison import POISONED_TOPICS, expected_bad_data, expected_dead_letterers, poison_document
from reliability.load import Mix
from shared.contract import MESSAGES, MessageFormatError, decode


@pytest.mark.integration
@pytest.mark.timeout(420)
async def test_reduced_chaos_run(tmp_path: Path) -> None:
    out = tmp_path / "chaos-reduced.json"
    config = ChaosConfig(
        rate=5.0,
        pre_s=2.0,
        fault_s=3.0,
        post_s=2.0,
        saga_timeout_s=5.0,
        recovery_timeout_s=120.0,
        faults=REDUCED_FAULTS,
        cancel_ratio=0.05,
        out=out,
        seed=7,
    )
    report = await run_chaos(config)
    results = [FaultResult(**{k: v for k, v in f.items() if k != "ok"}) for f in report["faults"]]
    table = render_table(results)
    print("\n" + table + f"\ntimings: {report['timings']}")
    assert [r.fault for r in results] == list(REDUCED_FAULTS), table
    for r in results:
        assert r.error is None, (r.fault, r.error)
        assert r.placed > 0, (r.fault, r.load)
        assert r.lost == 0, (r.fault, r.lost_ids)
        assert r.duplicates == 0, (r.fault, r.sample_violations)
        assert r.recovery_s is not None and r.audit_ok, (r.fault, r.violations, r.sample_violations, r.details)
    poison = next(r for r in results if r.fault == "poison")
    assert poison.details["poison_injected"] == 10
    assert poison.details["poison_not_dead_lettered"] == [] and poison.details["poison_positions_not_past"] == []
    assert report["ok"] is True
    assert json.loads(out.read_text())["totals"]["lost"] == 0


def test_every_fault_has_an_injector_and_a_description() -> None:
    from reliability.chaos import DESCRIPTIONS, ChaosHarness

    assert set(DESCRIPTIONS) == set(ALL_FAULTS)
    assert set(REDUCED_FAULTS) <= set(ALL_FAULTS)
    harness = ChaosHarness.__new__(ChaosHarness)  # no stack: only the fault table is looked at
    harness.config = ChaosConfig()
    for fault in ALL_FAULTS:
        assert callable(harness.injector(fault))
    with pytest.raises(ValueError):
        harness.injector("kill-everything")


def test_the_proxied_broker_advertises_the_proxy_only_on_its_own_listener(tmp_path: Path) -> None:
    broker = ProxiedKafkaBroker(
        tmp_path, port=9100, controller_port=9101, proxied_port=9102, advertised_proxy_port=9103
    )
    props = dict(line.split("=", 1) for line in broker.server_properties().splitlines())
    assert props["listeners"] == ("PLAINTEXT://127.0.0.1:9100,PROXIED://127.0.0.1:9102,CONTROLLER://127.0.0.1:9101")
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:9100,PROXIED://127.0.0.1:9103"
    assert "PROXIED:PLAINTEXT" in props["listener.security.protocol.map"]
    assert props["controller.quorum.voters"] == "1@127.0.0.1:9101"


def test_cli_arguments_and_the_table() -> None:
    args = build_parser().parse_args(["--faults", "reduced", "--rate", "7"])
    assert args.faults == "reduced" and args.rate == 7.0
    assert main(["--faults", "kill-everything"]) == 2
    assert Mix.parse("90,5,5") == Mix(90.0, 5.0, 5.0)
    with pytest.raises(ValueError):
        Mix.parse("1,2")
    ok = FaultResult("kill-order", "d", placed=10, recovery_s=1.5, audit_ok=True)
    bad = FaultResult("pg-immediate", "d", placed=3, lost=1, violations={"lost_order": 1})
    table = render_table([ok, bad])
    assert "kill-order" in table and "never" in table and "lost_order=1" in table
    assert ok.ok and not bad.ok


def test_the_bad_data_poison_claims_a_contract_type_but_breaks_its_schema() -> None:
    for topic in POISONED_TOPICS:
        document = poison_document(topic)
        assert document["type"] in MESSAGES
        with pytest.raises(MessageFormatError):
            decode(orjson.dumps(document))
    assert set(expected_dead_letterers("query-g1")) == set(POISONED_TOPICS)
    for topic in POISONED_TOPICS:
        assert expected_bad_data(topic, "query-g1") <= expected_dead_letterers("query-g1")[topic]
