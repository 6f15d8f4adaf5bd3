"""Escalation, on-call and Twilio configuration: defaults, and errors that name the key."""
from __future__ import annotations

import textwrap
from datetime import timedelta

import pytest

from bot.config import ConfigError, load_config
from escalation import timers as tm

BASE = """
[[teams]]
id = "maint"
name = "维修一组"
lead = "lead_zhao"
director = "director_sun"

[[people]]
id = "eng_zhang"
name = "张工"
role = "engineer"
team = "maint"

[[people]]
id = "lead_zhao"
name = "赵组长"
role = "lead"
team = "maint"

[[people]]
id = "director_sun"
name = "孙总监"
role = "director"
"""


def load(tmp_path, text: str, env: dict | None = None):
    path = tmp_path / "c.toml"
    path.write_text(textwrap.dedent(text) + BASE, encoding="utf-8")
    return load_config(path, env=env or {})


def error(tmp_path, text: str) -> str:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, text)
    return str(e.value)


def test_defaults_from_the_field(tmp_path):
    c = load(tmp_path, "")
    p0 = c.escalation.P0.steps
    assert [(s.after, s.state, s.targets, s.means) for s in p0] == [
        (timedelta(minutes=10), "unclaimed", ["lead"], ["mention", "card"]),
        (timedelta(minutes=30), "no_progress", ["director"], ["card", "call"]),
    ]
    assert [s.after for s in c.escalation.P1.steps] == [timedelta(minutes=30), timedelta(hours=2)]
    assert [(s.after, s.targets) for s in c.escalation.P2.steps] == [(timedelta(hours=4), ["lead"])]
    assert c.escalation.sweep_interval == timedelta(seconds=1)
    assert c.twilio is None and c.oncall == {}


def test_the_embedded_demo_config_escalates_within_minutes():
    c = load_config(None, env={})
    assert c.escalation.P0.steps[0].after == timedelta(minutes=1)
    assert "call" in c.escalation.P0.steps[1].means
    assert "maint" in c.oncall


def test_a_policy_is_a_snapshot_of_chains(tmp_path):
    c = load(tmp_path, """
        [escalation.P0]
        repeat = 1
        [[escalation.P0.steps]]
        after = "5m"
        targets = ["oncall"]
        means = ["card"]
        [[escalation.P0.steps]]
        after = "1h"
        state = "on_site"
        targets = ["assignee", "person:eng_zhang"]
        means = ["sms"]
        [[escalation.P0.steps]]
        after = "15m"
        targets = ["lead"]
        means = ["call"]
        """)
    snap = tm.snapshot(c.escalation.P0)
    assert set(snap) == {"unclaimed", "on_site"}
    assert [s["i"] for s in snap["unclaimed"]["steps"]] == [0, 2]
    assert snap["unclaimed"]["cycle_s"] == 900 and snap["unclaimed"]["repeat"] == 1
    assert snap["on_site"]["steps"][0]["targets"] == ["assignee", "person:eng_zhang"]


@pytest.mark.parametrize("toml, key", [
    ('[[escalation.P0.steps]]\nafter = "ten minutes"\ntargets = ["lead"]\nmeans = ["card"]',
     "escalation.P0.steps[0].after"),
    ('[[escalation.P0.steps]]\nafter = "10m"\ntargets = ["lead"]\nmeans = ["card"]\n'
     '[[escalation.P0.steps]]\nafter = "-5m"\ntargets = ["lead"]\nmeans = ["card"]',
     "escalation.P0.steps[1].after"),
    ('[[escalation.P1.steps]]\nafter = "10m"\ntargets = ["lead"]\nmeans = ["pager"]',
     "escalation.P1.steps[0].means[0]"),
    ('[[escalation.P1.steps]]\nafter = "10m"\ntargets = ["lead"]\nmeans = []',
     "escalation.P1.steps[0].means"),
    ('[[escalation.P2.steps]]\nafter = "10m"\nstate = "sleeping"\ntargets = ["lead"]\nmeans = ["card"]',
     "escalation.P2.steps[0].state"),
    ('[[escalation.P2.steps]]\nafter = "10m"\ntargets = ["the boss"]\nmeans = ["card"]',
     "escalation.P2.steps[0].targets[0]: 'the boss': a target is"),
    ('[[escalation.P0.steps]]\nafter = "10m"\ntargets = ["lead"]\nmeans = ["card"]\ncolour = "red"',
     "escalation.P0.steps[0].colour: unknown key"),
    ('[escalation]\nsweep_interval = "0s"', "escalation.sweep_interval"),
    ('[escalation.P3]\nsteps = []', "escalation.P3: unknown key"),
])
def test_bad_policies_name_the_key(tmp_path, toml, key):
    assert key in error(tmp_path, toml)


def test_references_are_checked(tmp_path):
    msg = error(tmp_path, '[[escalation.P1.steps]]\nafter = "10m"\ntargets = ["lead", "person:nobody"]\n'
                          'means = ["card"]')
    assert "escalation.P1.steps[0].targets[1]: unknown person 'nobody'" in msg
    msg = error(tmp_path, '[[escalation.P1.steps]]\nafter = "10m"\ntargets = ["oncall:night"]\nmeans = ["card"]')
    assert "escalation.P1.steps[0].targets[0]: unknown team 'night'" in msg
    msg = error(tmp_path, '[[escalation.P1.steps]]\nafter = "10m"\ntargets = ["oncall:maint"]\nmeans = ["card"]')
    assert "has no [oncall.maint] schedule" in msg


def test_steps_of_a_chain_must_be_in_time_order(tmp_path):
    msg = error(tmp_path, """
        [[escalation.P0.steps]]
        after = "30m"
        targets = ["director"]
        means = ["card"]
        [[escalation.P0.steps]]
        after = "45m"
        state = "no_progress"
        targets = ["director"]
        means = ["card"]
        [[escalation.P0.steps]]
        after = "10m"
        targets = ["lead"]
        means = ["card"]
        """)
    assert "escalation.P0.steps[2].after: 10m is earlier than steps[0] (30m)" in msg


@pytest.mark.parametrize("toml, needle", [
    ('[oncall.night]\nrotation = ["eng_zhang"]', "oncall.night: unknown team 'night'"),
    ('[oncall.maint]\nrotation = ["eng_wu"]', "oncall.maint.rotation[0]: unknown person 'eng_wu'"),
    ('[oncall.maint]\nrotation = []', "oncall.maint.rotation"),
    ('[oncall.maint]\nrotation = ["eng_zhang"]\n[[oncall.maint.shifts]]\nname = "d"\nstart = "25:00"\nend = "08:00"',
     "oncall.maint.shifts[0].start"),
    ('[oncall.maint]\nrotation = ["eng_zhang"]\n[[oncall.maint.shifts]]\nname = "day"\nstart = "08:00"\n'
     'end = "20:00"\n[[oncall.maint.shifts]]\nname = "late"\nstart = "19:00"\nend = "08:00"',
     "shifts[1] (late) overlaps shifts[0] (day) at 19:00"),
    ('[oncall.maint]\nrotation = ["eng_zhang"]\n[[oncall.maint.overrides]]\nperson = "eng_zhang"\n'
     'start = 2026-02-01T20:00:00\nend = 2026-02-01T08:00:00', "end must be after start"),
    ('[oncall.maint]\nrotation = ["eng_zhang"]\n[[oncall.maint.overrides]]\nperson = "eng_x"\n'
     'start = 2026-02-01T20:00:00\nend = 2026-02-02T08:00:00', "oncall.maint.overrides[0].person: unknown person"),
    ('[oncall.maint]\nrotation = ["eng_zhang"]\nrotate = "hourly"', "oncall.maint.rotate"),
])
def test_bad_oncall_names_the_key(tmp_path, toml, needle):
    assert needle in error(tmp_path, toml)


def test_twilio_section(tmp_path):
    c = load(tmp_path, '[twilio]\naccount_sid = "AC1"\nauth_token = "x"\nfrom_number = "+14155550100"\n',
             env={"RELAYDESK_TWILIO__AUTH_TOKEN": "from-env"})
    assert c.twilio.auth_token == "from-env" and c.twilio.api_base == "https://api.twilio.com"
    assert (c.phone.max_calls, c.phone.call_window) == (3, timedelta(minutes=15))
    assert "twilio.from_number" in error(tmp_path, '[twilio]\naccount_sid = "AC1"\nauth_token = "x"\n'
                                                   'from_number = "0415555"\n')


ALIYUN = """[aliyun]
access_key_id = "LTAI5t"
access_key_secret = "secret"
tts_code = "TTS_100"
ack_code = "TTS_101"
escalate_code = "TTS_102"
tts_params = { ticket = "number", kind = "category", where = "place", level = "priority", waited = "minutes" }
"""


def test_aliyun_and_tencent_sections(tmp_path):
    c = load(tmp_path, ALIYUN + '[tencent]\nsecret_id = "AKID"\nsecret_key = "k"\nvoice_sdk_appid = "1400000000"\n'
             'template_id = "123456"\ntemplate_params = ["number", "place", "minutes"]\n'
             'callback_token = "0123456789abcdef"\n[phone]\nproviders = ["tencent", "aliyun"]\n')
    assert c.aliyun.limits == ["1/1m", "5/1h", "20/1d"] and c.aliyun.countries == ["CN"]
    assert c.aliyun.tts_params["waited"] == "minutes"
    assert c.tencent.template_params == ["number", "place", "minutes"]
    from escalation.config import phone_providers

    assert [name for name, _ in phone_providers(c)] == ["tencent", "aliyun"]


@pytest.mark.parametrize("toml, needle", [
    (ALIYUN.replace('waited = "minutes"', 'waited = "hours"'), "aliyun.tts_params.waited"),
    (ALIYUN.replace('tts_code = "TTS_100"', 'tts_code = "100"'), "aliyun.tts_code"),
    (ALIYUN.replace('ack_code = "TTS_101"\n', ""), "ack_code"),
    (ALIYUN + 'limits = ["1 per minute"]\n', "aliyun.limits"),
    (ALIYUN + 'sms_sign_name = "RelayDesk"\n', "sms_template_code"),
    ('[tencent]\nsecret_id = "AKID"\nsecret_key = "k"\nvoice_sdk_appid = "1400000000"\ntemplate_id = "1"\n'
     'template_params = ["ticket"]\ncallback_token = "0123456789abcdef"\n', "tencent.template_params"),
    ('[tencent]\nsecret_id = "AKID"\nsecret_key = "k"\nvoice_sdk_appid = "1400000000"\ntemplate_id = "1"\n',
     "tencent.callback_token"),
    ('[phone]\nproviders = ["aliyun"]\n', "phone.providers[0]"),
])
def test_bad_phone_templates_name_the_key(tmp_path, toml, needle):
    assert needle in error(tmp_path, toml)
