"""views.sql repeats a few constants of services.query.store and .generations; they must not drift apart."""

from __future__ import annotations

import re
from pathlib import Path

from services.query import generations, store
from services.query.projection import COLUMNS

VIEWS_SQL = (Path(store.__file__).parent / "views.sql").read_text()


def _function(name: str) -> str:
    match = re.search(rf"FUNCTION {name}\(.*?END \$fn\$;", VIEWS_SQL, re.S)
    assert match, f"{name} is not defined in views.sql"
    return match.group(0)


def test_batches_share_the_generation_lock_a_switch_takes_alone() -> None:
    assert f"pg_advisory_xact_lock_shared({generations.GENERATION_LOCK})" in _function("query_batch_begin")


def test_the_feed_is_appended_under_the_feed_lock_and_wakes_the_views_channel() -> None:
    body = _function("query_feed_append")
    assert f"pg_advisory_xact_lock({store.FEED_LOCK})" in body
    assert f"pg_notify('{store.VIEWS_CHANNEL}'" in body
    assert body.index("pg_advisory_xact_lock") < body.index("INSERT INTO fact_feed"), "seq is assigned under the lock"


def test_the_orders_table_has_the_read_model_s_columns_in_order() -> None:
    table = re.search(
        r"CREATE TABLE IF NOT EXISTS %1\$I\.orders \((.*?)\) WITH", _function("query_create_generation_schema"), re.S
    )
    assert table
    assert tuple(re.findall(r"^\s+(\w+)\s+[A-Z]", table.group(1), re.M)) == COLUMNS
