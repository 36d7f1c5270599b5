"""A TCP fault proxy: put it between one service and PostgreSQL or Kafka, then break the wire.

    client ──► FaultProxy(listen_port) ──► target_host:target_port

Modes, switchable at runtime (`set_mode`, or the tiny HTTP control API of `python -m
reliability.faultproxy`):

* ``pass``      — bytes flow unchanged, both directions.
* ``latency``   — every chunk is held `latency_ms` before it is forwarded, both directions
                  (a per-direction queue keeps the order; latency does not accumulate).
* ``reset``     — every open connection is reset (TCP RST, SO_LINGER 0) and every new one is
                  reset as soon as it is accepted, for as long as the mode lasts.
* ``blackhole`` — nothing is forwarded and new connections are accepted but never connected
                  upstream: the peer sees a silent network (timeouts), like a partition.
                  Bytes already read are held, not dropped, and flow again once the mode
                  ends — what TCP retransmission does after a partition heals — so a stream
                  protocol is never desynchronised by the proxy itself. Reading stops once
                  a small buffer is full (back-pressure instead of unbounded memory).

`FaultProxy` lives on the event loop that started it; `ProxyThread` runs one on a private
loop in a daemon thread (so a blocking caller never stalls the proxied traffic) and exposes
thread-safe `set_mode` / `reset_connections`.

Kafka: a client talks to the address the broker *advertises* in its metadata, not to the
bootstrap address, so proxying Kafka needs a broker listener whose advertised address is the
proxy (see `reliability.chaos.ProxiedKafkaBroker`: a second listener advertised as the proxy
port, used only by the service under test).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger("reliability.faultproxy")

CHUNK = 64 * 1024
#: Chunks held per direction (latency / blackhole) before the proxy stops reading that side.
MAX_HELD_CHUNKS = 256

T = TypeVar("T")


class Mode(StrEnum):
    PASS = "pass"
    LATENCY = "latency"
    RESET = "reset"
    BLACKHOLE = "blackhole"


@dataclass
class ProxyStats:
    accepted: int = 0
    reset: int = 0
    upstream_failures: int = 0
    bytes_up: int = 0  # client → target
    bytes_down: int = 0  # target → client

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST instead of a FIN (SO_LINGER on, timeout 0)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass(eq=False)
class _Connection:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    handler: asyncio.Task[Any] | None = None

    def reset(self) -> None:
        _rst(self.client)
        if self.upstream is not None:
            _rst(self.upstream)
        for task in self.tasks:
            task.cancel()


class FaultProxy:
    """An asyncio TCP proxy with switchable faults (see the module docstring)."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        name: str = "proxy",
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.name = name
        self.mode = Mode.PASS
        self.latency_ms = 0.0
        self.stats = ProxyStats()
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._unblocked = asyncio.Event()
        self._unblocked.set()

    @property
    def port(self) -> int:
        """The port it listens on (the real one once started with listen_port=0)."""
        return self.listen_port

    @property
    def address(self) -> str:
        return f"{self.listen_host}:{self.listen_port}"

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._on_client, self.listen_host, self.listen_port)
        self.listen_port = self._server.sockets[0].getsockname()[1]
        log.info(
            "fault proxy listening",
            extra={"proxy": self.name, "listen": self.address, "target": f"{self.target_host}:{self.target_port}"},
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        pending: list[asyncio.Task[None]] = []
        for conn in list(self._connections):
            conn.reset()
            pending.extend(conn.tasks)
            if conn.handler is not None:
                conn.handler.cancel()
                pending.append(conn.handler)
        self._connections.clear()
        self._unblocked.set()
        await asyncio.gather(*pending, return_exceptions=True)

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ control

    def set_mode(self, mode: Mode | str, latency_ms: float = 0.0) -> None:
        """Switch the fault; call on the proxy's loop (ProxyThread does that for you)."""
        mode = Mode(mode)
        if mode is Mode.LATENCY and latency_ms <= 0:
            raise ValueError("latency mode needs latency_ms > 0")
        self.mode = mode
        self.latency_ms = latency_ms if mode is Mode.LATENCY else 0.0
        if mode is Mode.BLACKHOLE:
            self._unblocked.clear()
        else:
            self._unblocked.set()
        if mode is Mode.RESET:
            self.reset_connections()
        log.info("fault proxy mode", extra={"proxy": self.name, "mode": str(mode), "latency_ms": latency_ms})

    def reset_connections(self) -> int:
        """RST every open connection now (the mode is unchanged); how many were reset."""
        conns = list(self._connections)
        for conn in conns:
            conn.reset()
        self._connections.difference_update(conns)
        self.stats.reset += len(conns)
        return len(conns)

    def state(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "listen": self.address,
            "target": f"{self.target_host}:{self.target_port}",
            "mode": str(self.mode),
            "latency_ms": self.latency_ms,
            "open_connections": self.open_connections,
            "stats": self.stats.to_dict(),
        }

    # ------------------------------------------------------------------ data path

    def _resetting(self) -> bool:
        return self.mode is Mode.RESET

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        if self.mode is Mode.RESET:
            self.stats.reset += 1
            _rst(writer)
            return
        conn = _Connection(writer, handler=asyncio.current_task())
        self._connections.add(conn)
        try:
            await self._unblocked.wait()  # blackhole: the SYN-ACK came, then silence
            if self._resetting() or conn not in self._connections:
                _rst(writer)
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
            except OSError:
                self.stats.upstream_failures += 1
                _rst(writer)
                return
            conn.upstream = up_writer
            conn.tasks = [
                asyncio.create_task(self._pipe(reader, up_writer, up=True)),
                asyncio.create_task(self._pipe(up_reader, writer, up=False)),
            ]
            await asyncio.wait(conn.tasks, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            pass
        finally:
            for task in conn.tasks:
                task.cancel()
            self._connections.discard(conn)
            for w in (writer, conn.upstream):
                if w is not None and not w.is_closing():
                    w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, up: bool) -> None:
        """Copy one direction through a bounded queue of (release time, bytes)."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(MAX_HELD_CHUNKS)

        async def forward() -> None:
            loop = asyncio.get_running_loop()
            while True:
                release_at, data = await queue.get()
                if not data:
                    with contextlib.suppress(OSError):
                        if writer.can_write_eof():
                            writer.write_eof()
                    return
                delay = release_at - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self._unblocked.wait()
                writer.write(data)
                await writer.drain()
                if up:
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)

        sender = asyncio.create_task(forward())
        try:
            loop = asyncio.get_running_loop()
            while True:
                data = await reader.read(CHUNK)
                release_at = loop.time() + self.latency_ms / 1000.0
                await queue.put((release_at, data))
                if not data:
                    break
            await sender
        except (ConnectionError, OSError):
            pass
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                await sender


class ProxyThread:
    """A FaultProxy on its own event loop in a daemon thread; every method is thread-safe."""

    def __init__(self, target_host: str, target_port: int, *, listen_port: int = 0, name: str = "proxy") -> None:
        self._loop = asyncio.new_event_loop()
        self.proxy = FaultProxy(target_host, target_port, listen_port=listen_port, name=name)
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"faultproxy-{name}", daemon=True)
        self._thread.start()
        self._call(self._start)

    async def _start(self) -> None:
        await self.proxy.start()

    def _call(self, factory: Callable[[], Coroutine[Any, Any, T]], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(factory(), self._loop).result(timeout)

    @property
    def port(self) -> int:
        return self.proxy.port

    @property
    def address(self) -> str:
        return self.proxy.address

    def set_mode(self, mode: Mode | str, latency_ms: float = 0.0) -> None:
        async def go() -> None:
            self.proxy.set_mode(mode, latency_ms)

        self._call(go)

    def reset_connections(self) -> int:
        async def go() -> int:
            return self.proxy.reset_connections()

        return self._call(go)

    def state(self) -> dict[str, Any]:
        async def go() -> dict[str, Any]:
            return self.proxy.state()

        return self._call(go)

    def close(self) -> None:
        if not self._loop.is_running():
            return
        with contextlib.suppress(Exception):
            self._call(self.proxy.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> ProxyThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------- control API (HTTP)


async def serve_control(proxy: FaultProxy, host: str, port: int) -> asyncio.Server:
    """A tiny HTTP control API for a proxy running in its own process.

    GET  /                          → the proxy's state (JSON)
    POST /mode?mode=latency&ms=200  → switch (modes: pass, latency, reset, blackhole)
    POST /reset                     → RST the open connections once, mode unchanged
    """

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = (await reader.readline()).decode("latin-1").strip()
            while (await reader.readline()).strip():
                pass  # headers: not needed
            method, target, *_ = request_line.split(" ") + ["", ""]
            url = urlsplit(target)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            status, body = 200, proxy.state()
            if method == "POST" and url.path == "/mode":
                try:
                    proxy.set_mode(query.get("mode", ""), float(query.get("ms", "0") or 0))
                    body = proxy.state()
                except ValueError as exc:
                    status, body = 422, {"error": str(exc)}
            elif method == "POST" and url.path == "/reset":
                body = {"reset": proxy.reset_connections(), **proxy.state()}
            elif not (method == "GET" and url.path == "/"):
                status, body = 404, {"error": f"no route {method} {url.path}"}
            payload = json.dumps(body).encode()
            reason = {200: "OK", 404: "Not Found", 422: "Unprocessable Entity"}[status]
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)


def _host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host or "127.0.0.1", int(port)


async def _main(args: argparse.Namespace) -> None:
    target_host, target_port = _host_port(args.target)
    listen_host, listen_port = _host_port(args.listen)
    proxy = FaultProxy(target_host, target_port, listen_host=listen_host, listen_port=listen_port, name=args.name)
    await proxy.start()
    control_host, control_port = _host_port(args.control)
    control = await serve_control(proxy, control_host, control_port)
    print(
        json.dumps(
            {
                "proxy": proxy.address,
                "control": f"{control_host}:{control.sockets[0].getsockname()[1]}",
                "started_at": time.time(),
            }
        ),
        flush=True,
    )
    try:
        await asyncio.Event().wait()
    finally:
        control.close()
        await proxy.close()


def main(argv: list[str] | None = None) -> None:
    """`python -m reliability.faultproxy --listen 127.0.0.1:6000 --target 127.0.0.1:5432 --control 127.0.0.1:6001`"""
    parser = argparse.ArgumentParser(description="TCP fault proxy with an HTTP control API")
    parser.add_argument("--listen", required=True, help="host:port to listen on (port 0 = any free port)")
    parser.add_argument("--target", required=True, help="host:port to forward to")
    parser.add_argument("--control", default="127.0.0.1:0", help="host:port of the HTTP control API")
    parser.add_argument("--name", default="proxy")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args))


if __name__ == "__main__":
    main()
