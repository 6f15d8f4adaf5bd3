"""Aliyun call receipts pulled from the MNS queues (轻量消息队列) the voice
console creates for them: no inbound port, no public URL.

Per configured queue (`[aliyun] mns_queues`, message type -> queue name) a task
long-polls the queue: it asks dybaseapi (QueryTokenForMnsQueue, through the
official SDK, ACS3-signed) for a temporary token, renewed two minutes before
it expires, and receives up to 16 messages at a time with the official MNS
SDK (blocking: it runs in a worker thread). Each message is one receipt,
applied as a pushed one is (escalation.receipts.apply_aliyun: it must name a
call RelayDesk placed) and deleted from the queue once applied — a receipt
that failed to apply stays and comes back after the queue's visibility
timeout; one for a call that is not ours is logged and deleted.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from bot.tasks import BackgroundTasks
from escalation.receipts import apply_aliyun

if TYPE_CHECKING:  # pragma: no cover
    from escalation.engine import EscalationEngine

log = logging.getLogger(__name__)

BATCH = 16  # MNS hands out at most 16 messages per receive
RENEW_BEFORE = timedelta(minutes=2)
# dybaseapi writes the token's expiry in Beijing time, without a zone.
_TOKEN_TZ = ZoneInfo("Asia/Shanghai")
# MNS errors that mean the token is no good any more.
_TOKEN_ERRORS = frozenset({"SecurityTokenExpired", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"})


@dataclass
class _Lease:
    queue: object  # mns.queue.Queue
    expires: datetime


def decode(body: str | bytes) -> dict | None:
    """A message body: the receipt's JSON object, as is or base64-encoded."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    for attempt in (lambda b: b, lambda b: base64.b64decode(b, validate=True).decode("utf-8")):
        try:
            data = json.loads(attempt(body))
        except (ValueError, binascii.Error, UnicodeDecodeError):
            continue
        if isinstance(data, dict):
            return data
    return None


class AliyunReceiptQueue:
    def __init__(self, engine: "EscalationEngine"):
        cfg = engine.config.aliyun
        assert cfg is not None
        self.engine = engine
        self.config = cfg
        self._leases: dict[str, _Lease] = {}
        self._client = None
        self.tasks = BackgroundTasks("aliyun-receipts")

    # ---- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        for message_type, queue_name in self.config.mns_queues.items():
            self.tasks.spawn(self._run(message_type, queue_name), message_type)

    async def stop(self) -> None:
        """Cancel the pollers (a receive in flight ends in its worker thread within
        `mns_wait`), then close the connections."""
        await self.tasks.stop()
        for message_type in list(self._leases):
            self._drop(message_type)

    def _drop(self, message_type: str) -> None:
        """Forget a queue's token and close its (keep-alive) connection."""
        lease = self._leases.pop(message_type, None)
        if lease is not None:
            lease.queue.mns_client.http.conn.close()

    async def _run(self, message_type: str, queue_name: str) -> None:
        delay = 1.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                started = loop.time()
                if not await self.poll(message_type, queue_name) and loop.time() - started < 1.0:
                    await asyncio.sleep(1.0)  # nothing, and no long poll (mns_wait = "0s"): don't spin
                delay = 1.0
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("aliyun receipts: pulling %s failed; again in %.0fs", queue_name, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)

    # ---- one round -------------------------------------------------------------------

    async def poll(self, message_type: str, queue_name: str) -> int:
        """Receive one batch (long-polling up to `mns_wait`), apply and delete it;
        the number of receipts applied."""
        from mns.mns_exception import MNSServerException

        queue = await self._queue(message_type, queue_name)
        wait = int(self.config.mns_wait.total_seconds())
        try:
            messages = await asyncio.to_thread(queue.batch_receive_message, BATCH, wait)
        except MNSServerException as e:
            if e.type == "MessageNotExist":
                return 0
            if e.type in _TOKEN_ERRORS:
                self._drop(message_type)
            raise
        applied = 0
        for message in messages:
            report = decode(message.message_body)
            if report is None:
                log.warning("aliyun receipts: %s: a message that is not a JSON receipt, dropped", queue_name)
            elif await apply_aliyun(self.engine, [report]):
                applied += 1
            else:
                log.warning("aliyun receipts: %s: a receipt for a call RelayDesk did not place, dropped",
                            queue_name)
            await asyncio.to_thread(queue.delete_message, message.receipt_handle)
        return applied

    async def _queue(self, message_type: str, queue_name: str):
        lease = self._leases.get(message_type)
        if lease is not None and lease.expires - RENEW_BEFORE > datetime.now(timezone.utc):
            return lease.queue
        from mns.account import Account

        self._drop(message_type)
        token = await self._token(message_type, queue_name)
        account = Account(self.config.mns_endpoint.rstrip("/"), token.access_key_id, token.access_key_secret,
                          token.security_token)
        queue = account.get_queue(queue_name)
        queue.set_encoding(False)  # bodies are decoded by `decode`
        self._leases[message_type] = _Lease(queue, _expiry(token.expire_time))
        return queue

    async def _token(self, message_type: str, queue_name: str):
        from alibabacloud_dybaseapi20170525 import models
        from alibabacloud_dybaseapi20170525.client import Client
        from alibabacloud_tea_openapi import models as openapi_models
        from alibabacloud_tea_util import models as util_models

        if self._client is None:
            c = self.config
            self._client = Client(openapi_models.Config(
                access_key_id=c.access_key_id, access_key_secret=c.access_key_secret,
                endpoint=c.dybaseapi_endpoint, protocol=c.protocol, read_timeout=15000, connect_timeout=5000))
        response = await self._client.query_token_for_mns_queue_with_options_async(
            models.QueryTokenForMnsQueueRequest(message_type=message_type, queue_name=queue_name),
            util_models.RuntimeOptions(autoretry=False))
        body = response.body
        if body.code != "OK" or body.message_token_dto is None:
            raise RuntimeError(f"aliyun QueryTokenForMnsQueue {body.code}: {body.message}")
        return body.message_token_dto


def _expiry(value: str | None) -> datetime:
    """"2026-01-26 11:00:00" (Beijing time) -> an aware datetime; unknown: 5 minutes from now."""
    try:
        return datetime.strptime(value or "", "%Y-%m-%d %H:%M:%S").replace(tzinfo=_TOKEN_TZ)
    except ValueError:
        return datetime.now(timezone.utc) + timedelta(minutes=5) + RENEW_BEFORE
