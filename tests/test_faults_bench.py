"""bench/faults.py's fake platform: it counts deliveries after the platforms' own de-duplication."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is not an installed package

from bench.faults import FaultyApi, Request, excess, where  # noqa: E402
from bench.platforms import feishu, wecom  # noqa: E402


def _req(path: str, doc: dict, ok: bool = True, method: str = "POST") -> Request:
    return Request(0.0, method, path, path, json.dumps(doc, ensure_ascii=False), ok=ok)


def test_resends_count_unless_the_platform_drops_them():
    api = FaultyApi()
    card = {"touser": "zhangsan", "msgtype": "template_card", "template_card": {"title": "BX000001"}}
    group = {"receive_id": feishu.ENGINEERS_CHAT, "msg_type": "interactive", "content": "BX000001",
             "uuid": "rd7-abc"}
    api.requests = [
        _req("/cgi-bin/message/send", card),
        # A resend WeCom drops: same content, duplicate check on.
        _req("/cgi-bin/message/send", {**card, "enable_duplicate_check": 1, "duplicate_check_interval": 1800}),
        # Same content without the check: delivered again.
        _req("/cgi-bin/message/send", card),
        _req("/open-apis/im/v1/messages", group),
        _req("/open-apis/im/v1/messages", group),  # same uuid: Feishu drops it
        _req("/cgi-bin/appchat/send", {"chatid": wecom.ENGINEERS_CHAT, "markdown": {"content": "BX000001"}}),
        _req("/cgi-bin/appchat/send", {"chatid": wecom.ENGINEERS_CHAT, "markdown": {"content": "BX000001"}},
             ok=False),  # answered with an error: not delivered
        _req("/cgi-bin/message/update_template_card", card),  # an update in place, not a message
        _req("/cgi-bin/message/send", {"touser": "zhangsan", "text": {"content": "BX000002"}}),  # another report
    ]
    got = api.deliveries("BX000001")
    assert got == {("/cgi-bin/message/send", "eng_zhang"): 2, ("/open-apis/im/v1/messages", "group:feishu"): 1,
                   ("/cgi-bin/appchat/send", "group:wecom"): 1}
    assert api.group_card_at("BX000001", "wecom") == 0.0 and api.group_card_at("BX000002", "wecom") is None
    control = {("/cgi-bin/message/send", "eng_zhang"): 1, ("/open-apis/im/v1/messages", "group:feishu"): 1}
    extra = excess(got, control)
    assert extra == {("/cgi-bin/message/send", "eng_zhang"): 1}
    assert where(extra) == " (/cgi-bin/message/send -> eng_zhang x1)"
    assert where(excess(got, got)) == ""
