"""The neutral card as a dict: what the outbox stores and every renderer reads back."""
from __future__ import annotations

import dataclasses

from cards.model import Button, Card, CardField, TimelineStep


def _cards() -> list[Card]:
    return [
        Card(kind="notice", title="提示"),
        Card(kind="engineer", title="【P0】跳闸断电", color="red", subtitle="SRV-20261207-00001-0B4",
             fields=(CardField("位置", "3号线"), CardField("影响", "整条线都停了")), body="说明",
             timeline=(TimelineStep("报修", "done", "09:01"), TimelineStep("认领", "current"),
                       TimelineStep("完工", "todo")),
             buttons=(Button("认领", "tok-1", "primary"), Button("转交", "tok-2")), footer="+3 人报告",
             track_key="t1:eng", images=("media/a.jpg",)),
    ]


def test_to_dict_is_exactly_what_asdict_gives_and_reads_back():
    for card in _cards():
        d = card.to_dict()
        assert d == dataclasses.asdict(card)
        assert list(d) == [f.name for f in dataclasses.fields(Card)]
        assert Card.from_dict(d) == card
