"""The stream transport: one outbound WebSocket per app, for platforms that push events over it.

DingTalk (Stream mode) and Feishu (long connection) let a bot receive events
and card clicks without a public URL: the bot asks the platform's API for a
WebSocket endpoint, connects out, and answers each pushed frame over the same
connection. This module is the transport half; the platform adapter decodes
frames, hands events to the core and builds the answers.

What the link guarantees:

* every wait is bounded: the endpoint request and the WebSocket handshake
  (`connect_timeout`), each read (`idle_timeout`: no frame, not even the
  platform's keep-alive, for that long means a dead connection), each send;
* WebSocket pings every `heartbeat` seconds (aiohttp closes the connection
  when the pong does not come);
* reconnects by itself, with exponential back-off and full jitter between
  `backoff_min` and `backoff_max`, reset once a connection delivered a frame;
* frames are handled concurrently (a slow database write does not hold up
  the platform's pings), at most `max_inflight` at a time; the adapter answers
  (acknowledges) a frame only after what it carries is durably recorded, so
  a drop loses nothing: the platform redelivers unanswered frames;
* `state` ("connecting", "up", "down") with the time of the last change and
  the last error, for /healthz.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

import aiohttp

from bot.tasks import BackgroundTasks, wait_event

log = logging.getLogger(__name__)


class EndpointError(Exception):
    """The platform would not give a WebSocket endpoint (bad credentials, busy)."""


# (frame payload, a function that sends an answer on the connection the frame came from)
FrameHandler = Callable[[str | bytes, Callable[[str | bytes], Awaitable[None]]], Awaitable[None]]


@dataclass
class LinkTimings:
    connect_timeout: float = 10.0
    idle_timeout: float = 90.0
    heartbeat: float = 30.0
    send_timeout: float = 10.0
    backoff_min: float = 1.0
    backoff_max: float = 60.0
    max_inflight: int = 64


class StreamLink:
    """Keeps one WebSocket to a platform open and feeds its frames to `on_frame`."""

    def __init__(self, name: str, endpoint: Callable[[aiohttp.ClientSession], Awaitable[str]],
                 on_frame: FrameHandler, timings: LinkTimings | None = None, *,
                 keepalive: Callable[[], str | bytes] | None = None):
        self.name = name
        # A platform-level ping frame sent every `timings.heartbeat` seconds, for platforms
        # that expect one besides WebSocket pings (Feishu).
        self._keepalive = keepalive
        self._endpoint = endpoint
        self._on_frame = on_frame
        self.timings = timings or LinkTimings()
        self.state = "connecting"
        self.since = time.time()
        self.last_error: str | None = None
        self.connections = 0  # connections opened so far
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._stopping = asyncio.Event()
        self._tasks = BackgroundTasks(f"{name}-stream")  # the connection loop
        self._frames = BackgroundTasks(f"{name}-frames")  # frames being handled

    # ---- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        self._tasks.spawn(self._run(), "connection")

    async def close(self) -> None:
        """Stop: frames being handled get a moment to finish (and be answered), then everything
        is cancelled, each step bounded."""
        self._stopping.set()
        await self._frames.wait(5)
        await self._frames.stop()
        if self._ws is not None:
            await self._ws.close()
        if not await self._tasks.wait(5):
            await self._tasks.stop()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def health(self) -> dict:
        return {"state": self.state, "since": round(self.since, 3), "last_error": self.last_error,
                "connections": self.connections}

    def _set(self, state: str, error: str | None = None) -> None:
        if state != self.state:
            self.state, self.since = state, time.time()
        if error is not None:
            self.last_error = error

    # ---- the loop ----------------------------------------------------------

    async def _run(self) -> None:
        t = self.timings
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=t.connect_timeout))
        failures = 0
        while not self._stopping.is_set():
            delivered = False
            try:
                delivered = await self._connect_once()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # any failure means: wait, then connect again
                self._set("down", f"{type(e).__name__}: {e}"[:300])
                if failures == 0:
                    log.warning("%s stream: %s; reconnecting", self.name, self.last_error)
                else:
                    log.debug("%s stream: %s (attempt %d)", self.name, self.last_error, failures + 1)
            else:
                if not self._stopping.is_set():
                    self._set("down", "connection closed by the platform")
            if self._stopping.is_set():
                break
            failures = 0 if delivered else failures + 1
            delay = random.uniform(t.backoff_min, min(t.backoff_max, t.backoff_min * 2 ** min(failures, 16)))
            await wait_event(self._stopping, delay)
            if not self._stopping.is_set():
                self._set("connecting")
        self._set("down", "closed")

    async def _connect_once(self) -> bool:
        """One connection, until it ends; whether it delivered any frame."""
        t = self.timings
        assert self._session is not None
        async with asyncio.timeout(t.connect_timeout):
            url = await self._endpoint(self._session)
        async with asyncio.timeout(t.connect_timeout):
            ws = await self._session.ws_connect(
                url, heartbeat=t.heartbeat, autoping=True, max_msg_size=4 * 1024 * 1024,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=t.send_timeout))
        self._ws = ws
        self.connections += 1
        self._set("up")
        if self.connections > 1:
            log.info("%s stream: connected again", self.name)
        delivered = False

        async def answer(data: str | bytes) -> None:
            if ws.closed:
                raise ConnectionResetError("the connection this frame came on is closed")
            async with asyncio.timeout(t.send_timeout):
                await (ws.send_bytes(data) if isinstance(data, bytes) else ws.send_str(data))

        pinger = self._tasks.spawn(self._ping(answer), "ping") if self._keepalive is not None else None
        try:
            while not self._stopping.is_set():
                try:
                    msg = await ws.receive(timeout=t.idle_timeout)
                except asyncio.TimeoutError:
                    raise ConnectionError(f"no frame for {t.idle_timeout:g} s") from None
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                    break
                if msg.type == aiohttp.WSMsgType.ERROR:
                    raise ConnectionError(f"WebSocket error: {ws.exception()}")
                if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    continue
                delivered = True
                while len(self._frames) >= t.max_inflight:  # back-pressure: the platform waits for answers
                    await asyncio.sleep(0.01)
                self._frames.spawn(self._handle(msg.data, answer), "frame")
        finally:
            self._ws = None
            if pinger is not None:
                pinger.cancel()
                await asyncio.gather(pinger, return_exceptions=True)
            if not ws.closed:
                await ws.close()
        return delivered

    async def _ping(self, send) -> None:
        assert self._keepalive is not None
        while True:
            try:
                await send(self._keepalive())
            except (ConnectionError, asyncio.TimeoutError):
                return  # the receive loop notices the dead connection
            await asyncio.sleep(self.timings.heartbeat)

    async def _handle(self, data: str | bytes, answer) -> None:
        try:
            await self._on_frame(data, answer)
        except asyncio.CancelledError:
            raise
        except (ConnectionError, asyncio.TimeoutError) as e:
            # Not answered: the platform delivers the frame again.
            log.info("%s stream: a frame could not be answered (%s); it will be redelivered", self.name, e)
        except Exception:
            log.exception("%s stream: handling a frame failed; it will be redelivered", self.name)
