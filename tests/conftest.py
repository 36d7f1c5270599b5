"""Session fixtures: one real Kafka broker and one real PostgreSQL server for the whole run.

They are started by the project's own infra on free ports in a temporary directory and
stopped, by PID, when the session ends; a stack the user has running is never touched.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from infra.stack import LocalStack, free_ports
from infra.tokens import DevKeys, ensure_dev_keys
from tests.auth_support import set_test_keys


@pytest.fixture(scope="session", autouse=True)
def auth_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevKeys]:
    """The session's development key pair; AUTH_JWKS_FILE points every app built here at it."""
    keys = ensure_dev_keys(tmp_path_factory.mktemp("auth"))
    previous = os.environ.get("AUTH_JWKS_FILE")
    os.environ["AUTH_JWKS_FILE"] = str(keys.jwks_path)
    set_test_keys(keys)
    try:
        yield keys
    finally:
        set_test_keys(None)
        if previous is None:
            os.environ.pop("AUTH_JWKS_FILE", None)
        else:
            os.environ["AUTH_JWKS_FILE"] = previous


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    run_dir = Path(os.environ.get("TEST_RUN_DIR") or tmp_path_factory.mktemp("stack"))
    kafka_port, controller_port, pg_port = free_ports(3)
    local = LocalStack(run_dir, kafka_port=kafka_port, controller_port=controller_port, pg_port=pg_port)
    try:
        local.start()
        yield local
    finally:
        local.purge()


@pytest.fixture
async def fresh_database(stack: LocalStack) -> AsyncIterator[str]:
    """A brand-new database owned by the app role; dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(stack.pg_admin_dsn())
    try:
        await admin.execute(f'CREATE DATABASE "{name}" OWNER app')
        yield stack.pg_dsn(name)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


NewTopicFactory = Callable[..., Awaitable[str]]


@pytest.fixture
async def new_topic(stack: LocalStack) -> AsyncIterator[NewTopicFactory]:
    """Create uniquely named topics (and their .dlq) so tests never see each other's messages."""
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()

    async def create(prefix: str = "test", partitions: int = 3) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}.events"
        await admin.create_topics([NewTopic(name, partitions, 1), NewTopic(name + ".dlq", 1, 1)])
        return name

    try:
        yield create
    finally:
        await admin.close()
