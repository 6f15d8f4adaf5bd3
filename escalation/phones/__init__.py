"""Phone providers behind one interface: Twilio, Aliyun 语音服务, Tencent Cloud VMS.

A provider places a call for a `CallRequest` (the number, what to read out,
the template fields, where its callbacks go) and sends SMS; it answers with its
own id of the call. Failures are `PhoneError`s that say what to do next:
`retryable` (an outage: the outbox tries again later), `limited` (the
provider's per-callee flow control refused it: try the next provider or an
SMS now), or neither (give up on this provider, with the reason).
"""
from __future__ import annotations

import hashlib
import hmac
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import phonenumbers


class PhoneError(Exception):
    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None,
                 limited: bool = False):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.limited = limited


@dataclass(frozen=True)
class CallRequest:
    """One call to place: `call_id` is RelayDesk's phone_call row."""

    call_id: int
    to: str  # E.164
    text: str  # the whole message, for providers that read free text (Twilio)
    fields: dict[str, str] = field(default_factory=dict)  # number, category, place, priority, minutes
    ring_timeout: int = 30


class PhoneProvider(ABC):
    """Places calls and sends SMS; returns the provider's id of each."""

    name: str = ""
    # Whether the callee can answer with a key (acknowledge / escalate).
    interactive: bool = True
    # Whether `sms` works.
    can_sms: bool = True

    async def start(self) -> None:
        """Open clients (inside the running loop)."""

    async def close(self) -> None:
        """Close clients."""

    @abstractmethod
    async def call(self, request: CallRequest) -> str:
        """Place the call; its receipts reach the provider's callback route."""

    @abstractmethod
    async def sms(self, to: str, text: str, fields: dict[str, str]) -> str:
        """Send a text message."""


def e164(number: str, default_country_code: str) -> str:
    """"138 0000 0004" -> "+8613800000004" (numbers without "+" get the default
    country code); "+1 415 555 0100" -> "+14155550100". Unparsable input is
    returned with separators stripped, for the provider to refuse."""
    raw = number.strip()
    if raw.startswith("00"):
        raw = "+" + raw[2:]
    region = phonenumbers.region_code_for_country_code(int(default_country_code.lstrip("+")))
    try:
        parsed = phonenumbers.parse(raw, None if raw.startswith("+") else region)
    except phonenumbers.NumberParseException:
        return "".join(ch for ch in raw if ch.isdigit() or ch == "+")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def region_of(number: str) -> str | None:
    """ISO region of an E.164 number ("CN" for +86), None when unknown."""
    try:
        region = phonenumbers.region_code_for_number(phonenumbers.parse(number, None))
    except phonenumbers.NumberParseException:
        return None
    return None if region in (None, "ZZ") else region


def national(number: str) -> str:
    """The national significant number ("+8613800000004" -> "13800000004"),
    which the domestic providers expect."""
    try:
        return str(phonenumbers.parse(number, None).national_number)
    except phonenumbers.NumberParseException:
        return number.lstrip("+")


def call_tag(secret: str, call_id: int) -> str:
    """`<call id>.<mac>`: passed with a call (Aliyun OutId, Tencent
    SessionContext) and echoed in its receipts, so a receipt names a call we
    placed and cannot be made up for another one without the secret."""
    mac = hmac.new(secret.encode(), f"relaydesk-call:{call_id}".encode(), hashlib.sha256).hexdigest()[:20]
    return f"{call_id}.{mac}"


def check_tag(secret: str, tag: str) -> int | None:
    """The call id of a genuine tag, else None."""
    head, _, _ = tag.partition(".")
    if not head.isdigit():
        return None
    return int(head) if hmac.compare_digest(call_tag(secret, int(head)), tag) else None


def fill(params: dict[str, str], fields: dict[str, str]) -> dict[str, str]:
    """Template variables by name -> the values RelayDesk fills in."""
    return {name: fields.get(source, "") for name, source in params.items()}
