"""`make chaos`: faults under a running load, each followed by recovery and the audit.

Everything runs on a **private** LocalStack (Kafka + PostgreSQL on free ports in a temp dir)
and the four services started as processes on free ports, never on the user's `make up`
stack. The order service runs with a short saga step timeout (`--saga-timeout-s`, default 5 s)
so timeouts and compensations happen within a run.

For each fault: open-loop load (`reliability.load`: default 50 orders/s, 90 % happy, 5 %
declined, 5 % unserved) starts; after `--pre-s` the fault is injected and lasts `--fault-s`;
the load continues `--post-s` after the fault ended, then stops; the harness waits until every
order placed so far is settled and the audit (`reliability.audit`, grace 0 = every lag check
on) passes, or `--recovery-timeout-s` elapses. Recorded per fault:

* placed     — POST /orders answered 202 during the fault's load;
* lost       — placed but missing from the order log, or still PENDING when recovery ended
               (must be 0);
* duplicates — new duplicate effects the audit found (two captures, two shipments, a reply
               applied twice by the saga …; must be 0);
* recovery_s — from the end of the fault until all placed orders were settled and the audit
               passed (None: it never did within the timeout).

The faults (`--faults`, comma-separated; default all):

  kill-order / kill-payment / kill-shipping / kill-query   SIGKILL the service, restart it
  sigterm-order / sigterm-payment / sigterm-shipping / sigterm-query
                       SIGTERM the service (a graceful stop: exit status 0 required), restart
                       it and wait for /health/ready
  kill-order-replica   a second order replica (same DB, other port) shares the load; SIGKILL
                       the first replica (likely the relay leader), restart it
  kill-kafka           SIGKILL the broker, restart it on the same data
  kill-broker          on a private 3-broker cluster: SIGKILL the active controller under
                       load, restart it; POST /orders must keep answering 202
  pg-immediate         PostgreSQL immediate shutdown (no checkpoint, crash recovery), restart
  sigstop-payment / sigstop-shipping   SIGSTOP the service for `--sigstop-s` (> the saga
                       timeout), then SIGCONT: the saga times out and compensates, the late
                       answers arrive afterwards
  rewind-offsets       stop payment, shipping, order and query; delete their stored positions
                       (`consumer_positions`) AND commit Kafka offset 0 for their groups;
                       restart: everything is redelivered (the inboxes must absorb it)
  poison               into every topic: garbage bytes and a well-formed CloudEvent with bad
                       data; each must land in `<topic>.dlq` (by the consumers it is poison
                       for) and the consumers must move past it
  pg-latency / pg-reset / pg-blackhole / kafka-latency / kafka-reset / kafka-blackhole
                       through `reliability.faultproxy`, between ONE service (`--proxied`,
                       default order) and PostgreSQL / Kafka: 300 ms latency each way,
                       every connection reset, or a silent network, for `--fault-s`

Proxying Kafka: a client connects to the address the broker advertises, so the private broker
gets a second listener (PROXIED) whose advertised address is the proxy port
(`ProxiedKafkaBroker`); only the proxied service bootstraps through it, everything else uses
the normal listener, so the fault is between that one service and Kafka.

Results: a table on stdout and `reliability/results/chaos-latest.json`. Exit 1 if any fault
lost an order, duplicated an effect or never recovered.

Modules: `config` (faults, settings, results), `harness` (the stack and one fault's run),
`faults` (the injectors), `poison` (poison messages, dead letters, Kafka offsets), `cli`.
"""

from reliability.chaos.cli import build_parser, main, render_table, run_chaos
from reliability.chaos.config import ALL_FAULTS, DESCRIPTIONS, REDUCED_FAULTS, ChaosConfig, FaultResult
from reliability.chaos.harness import ChaosHarness, ProxiedKafkaBroker

__all__ = [
    "ALL_FAULTS",
    "DESCRIPTIONS",
    "REDUCED_FAULTS",
    "ChaosConfig",
    "ChaosHarness",
    "FaultResult",
    "ProxiedKafkaBroker",
    "build_parser",
    "main",
    "render_table",
    "run_chaos",
]
