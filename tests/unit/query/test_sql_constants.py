"""views.sql repeats a few constants of services.query.store and .generations; they must not drift apart."""

from __future__ import annotations

import re
from pathlib import Path

from services.query import generations, store
from services.query.projection import COLUMNS

VIEWS_SQL = (Path(store.__file__).parent / "views.sql").read_text()


def _function(name: str) -> str:
    match = re.search(rf"CREATE OR REPLACE FUNCTION {name}\(.*?END \$fn\$;", VIEWS_SQL, re.S)
    assert match, f"{name} is not defined in views.sql"
    return match.group(0)


def test_batches_share_the_generation_lock_a_switch_takes_alone() -> None:
    writer = _function("query_create_generation_writer")
    assert f"pg_advisory_xact_lock_shared({generations.GENERATION_LOCK})" in writer
    lock = writer.index("pg_advisory_xact_lock_shared")
    assert lock < writer.index("view_generations") < writer.index("INSERT INTO"), "state read under the lock"


def test_the_feed_is_appended_under_the_feed_lock_and_wakes_the_views_channel() -> None:
    for writer in ("query_feed_append", "query_feed_release"):
        body = _function(writer)
        assert f"pg_advisory_xact_lock({store.FEED_LOCK})" in body, writer
        assert f"pg_notify('{store.VIEWS_CHANNEL}'" in body, writer
        lock = body.index("pg_advisory_xact_lock")
        writes = [m.start() for m in re.finditer(r"query_feed_emit\(|INSERT INTO", body)]
        assert writes and lock < min(writes), f"{writer}: seq is assigned (and holds decided) under the lock"
    # Rows reach fact_feed in query_feed_append (its set-based common case) and query_feed_emit,
    # which only the two writers (and itself, for what waited) call.
    inserts = re.findall(
        r"CREATE OR REPLACE FUNCTION (\w+)\((?:(?!END \$fn\$;).)*?INSERT INTO fact_feed ", VIEWS_SQL, re.S
    )
    assert inserts == ["query_feed_emit", "query_feed_append"]
    callers = set(
        re.findall(r"CREATE OR REPLACE FUNCTION (\w+)\((?:(?!END \$fn\$;).)*?PERFORM query_feed_emit", VIEWS_SQL, re.S)
    )
    assert callers == {"query_feed_emit", "query_feed_append", "query_feed_release"}


def test_a_fact_released_past_the_bound_is_marked_causalgap() -> None:
    assert """',"causalgap":"true"}'""" in _function("query_feed_release")


def test_the_orders_table_has_the_read_model_s_columns_in_order() -> None:
    table = re.search(
        r"CREATE TABLE IF NOT EXISTS %1\$I\.orders \((.*?)\) WITH", _function("query_create_generation"), re.S
    )
    assert table
    assert tuple(re.findall(r"^\s+(\w+)\s+[A-Z]", table.group(1), re.M)) == COLUMNS


def test_each_generation_s_writer_upserts_the_read_model_s_columns_by_name() -> None:
    writer = _function("query_create_generation_writer")
    insert = re.search(r"INSERT INTO %1\$I\.orders AS o \((.*?)\)", writer, re.S)
    record = re.search(r"json_to_recordset\(orders\) AS u\((.*?)\)\s+--", writer, re.S)
    assert insert and record
    assert tuple(c.strip() for c in insert.group(1).split(",")) == COLUMNS
    assert tuple(c.split()[0] for c in record.group(1).split(",")) == COLUMNS
    assert "query_feed_append(%2$s" in writer, "a current generation appends the feed in the same statement"
