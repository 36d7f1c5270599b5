"""The TCP fault proxy against a local echo server: pass, latency, reset, blackhole, control API."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from reliability.faultproxy import FaultProxy, Mode, ProxyThread, serve_control


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


@pytest.fixture
async def proxy(echo_port: int) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", echo_port, name="test") as p:
        yield p


async def _roundtrip(port: int, payload: bytes, timeout: float = 2.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(len(payload)), timeout)
    finally:
        writer.close()


async def test_pass_forwards_both_ways(proxy: FaultProxy) -> None:
    assert await _roundtrip(proxy.port, b"hello") == b"hello"
    big = bytes(range(256)) * 4096  # 1 MiB: several chunks, order kept
    assert await _roundtrip(proxy.port, big) == big
    assert proxy.stats.bytes_up >= len(big) and proxy.stats.bytes_down >= len(big)


async def test_latency_delays_each_direction_without_accumulating(proxy: FaultProxy) -> None:
    proxy.set_mode(Mode.LATENCY, latency_ms=150)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    started = time.monotonic()
    for i in range(5):  # pipelined: five chunks in flight at once
        writer.write(f"chunk-{i};".encode())
        await writer.drain()
        await asyncio.sleep(0.01)
    expected = b"".join(f"chunk-{i};".encode() for i in range(5))
    got = await asyncio.wait_for(reader.readexactly(len(expected)), 5)
    elapsed = time.monotonic() - started
    writer.close()
    assert got == expected
    assert 0.3 <= elapsed < 1.0, elapsed  # ≈ 2 × 150 ms, not 5 × 2 × 150 ms
    with pytest.raises(ValueError):
        proxy.set_mode(Mode.LATENCY, latency_ms=0)


async def test_reset_kills_open_and_new_connections(proxy: FaultProxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"x")
    assert await asyncio.wait_for(reader.readexactly(1), 2) == b"x"
    proxy.set_mode(Mode.RESET)
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        writer.write(b"y")
        await writer.drain()
        await asyncio.wait_for(reader.readexactly(1), 2)
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        await _roundtrip(proxy.port, b"new")
    assert proxy.stats.reset >= 2
    proxy.set_mode(Mode.PASS)
    assert await _roundtrip(proxy.port, b"back") == b"back"


async def test_blackhole_holds_traffic_and_releases_it_when_healed(proxy: FaultProxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    proxy.set_mode(Mode.BLACKHOLE)
    writer.write(b"held")
    await writer.drain()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(reader.readexactly(4), 0.5)
    # a new connection is accepted but goes nowhere
    reader2, writer2 = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer2.write(b"new")
    await writer2.drain()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(reader2.readexactly(3), 0.5)
    proxy.set_mode(Mode.PASS)  # the partition heals: nothing was lost
    assert await asyncio.wait_for(reader.readexactly(4), 2) == b"held"
    assert await asyncio.wait_for(reader2.readexactly(3), 2) == b"new"
    writer.close()
    writer2.close()


async def test_reset_connections_once_keeps_the_mode(proxy: FaultProxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"a")
    await asyncio.wait_for(reader.readexactly(1), 2)
    assert proxy.reset_connections() == 1
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        await asyncio.wait_for(reader.readexactly(1), 2)
    assert proxy.mode is Mode.PASS
    assert await _roundtrip(proxy.port, b"ok") == b"ok"


async def test_unreachable_target_resets_the_client() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead_port = s.getsockname()[1]
    s.close()
    async with FaultProxy("127.0.0.1", dead_port) as p:
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await _roundtrip(p.port, b"x")
        assert p.stats.upstream_failures == 1


async def test_http_control_api(proxy: FaultProxy) -> None:
    control = await serve_control(proxy, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{control.sockets[0].getsockname()[1]}"
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            assert (await client.get(url + "/")).json()["mode"] == "pass"
            r = await client.post(url + "/mode", params={"mode": "latency", "ms": "25"})
            assert r.status_code == 200 and r.json()["latency_ms"] == 25.0
            assert proxy.mode is Mode.LATENCY
            assert (await client.post(url + "/mode", params={"mode": "nonsense"})).status_code == 422
            assert (await client.post(url + "/reset")).json()["reset"] == 0
            assert (await client.post(url + "/mode", params={"mode": "pass"})).json()["mode"] == "pass"
            assert (await client.get(url + "/nowhere")).status_code == 404
    finally:
        control.close()


async def test_proxy_thread_is_driven_from_any_thread(echo_port: int) -> None:
    with ProxyThread("127.0.0.1", echo_port, name="threaded") as thread_proxy:
        assert await _roundtrip(thread_proxy.port, b"ping") == b"ping"
        await asyncio.to_thread(thread_proxy.set_mode, Mode.BLACKHOLE)
        with pytest.raises(asyncio.TimeoutError):
            await _roundtrip(thread_proxy.port, b"ping", timeout=0.3)
        thread_proxy.set_mode("pass")
        assert thread_proxy.state()["mode"] == "pass"
        assert await _roundtrip(thread_proxy.port, b"pong") == b"pong"
