"""Robot message parsing: any JSON object is either an event, nothing, or a 400."""
from __future__ import annotations

from hypothesis import given, settings, strategies as st

from bot.channels.dingtalk.adapter import DingTalkChannel
from bot.inbound import Refusal
from bot.config import DingTalkConfig

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
_fields = st.fixed_dictionaries({}, optional={
    "msgId": _json_values | st.just("msg1"), "conversationType": _json_values | st.sampled_from(["1", "2"]),
    "conversationId": _json_values | st.just("cid1"), "senderStaffId": _json_values | st.just("u1"),
    "msgtype": _json_values | st.sampled_from(["text", "picture", "richText", "audio", "file"]),
    "text": _json_values | st.fixed_dictionaries({"content": st.text(max_size=8)}),
    "content": _json_values, "atUsers": _json_values, "senderNick": _json_values, "chatbotUserId": _json_values,
})


@settings(max_examples=300, deadline=None)
@given(_fields)
def test_parse_robot_accepts_or_refuses_with_400(msg):
    channel = DingTalkChannel(DingTalkConfig(app_key="k", app_secret="s"), sink=None, db=None)
    try:
        event = channel.parse_robot(msg)
    except Refusal as e:
        assert e.status == 400
        return
    if event is not None:
        assert event.event_id == msg["msgId"] and event.sender_id == msg["senderStaffId"]
        assert event.kind in ("text", "image")
