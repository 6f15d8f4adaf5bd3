"""Configuration: defaults, environment overrides, refusals with the key named."""
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from bot.config import ConfigError, load_config
from bot.config_types import parse_duration

ROOT = Path(__file__).resolve().parents[1]


def test_embedded_default_is_the_demo():
    c = load_config(None, env={})
    assert c.database_url.startswith("sqlite+aiosqlite:///./data/")
    assert c.playground.enabled
    assert {p.role for p in c.people} >= {"customer", "engineer", "lead", "director"}
    assert c.tickets.deadlines["P0"].respond == timedelta(minutes=10)


def test_example_config_is_valid():
    c = load_config(ROOT / "relaydesk.example.toml", env={})
    assert c.teams and c.people


@pytest.mark.parametrize("text,seconds", [("30s", 30), ("10m", 600), ("2h", 7200), ("1h30m", 5400),
                                          ("1d", 86400), ("250ms", 0.25)])
def test_durations(text, seconds):
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("bad", ["10", "10 minutes", "m10", "", "1h-5m"])
def test_bad_durations(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_environment_wins(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('database_url = "sqlite+aiosqlite:///x.db"\n[server]\nport = 9000\n', encoding="utf-8")
    c = load_config(f, env={"RELAYDESK_DATABASE_URL": "postgresql+asyncpg://h/db", "RELAYDESK_SERVER__PORT": "9100"})
    assert c.database_url == "postgresql+asyncpg://h/db"
    assert c.server.port == 9100


@pytest.mark.parametrize("body,expected", [
    ('[tickets.deadlines.P0]\nrespond = 10\nresolve = "4h"\n', "tickets.deadlines.P0.respond"),
    ('[tickets.deadlines.P0]\nrespond = "10 mins"\nresolve = "4h"\n', "not a duration"),
    ("[server]\nprot = 80\n", "server.prot: unknown key"),
    ('[[people]]\nid = "a"\nname = "A"\nrole = "boss"\n', "people[0].role"),
    ('[[people]]\nid = "a"\nname = "A"\nrole = "engineer"\nteam = "nope"\n', "unknown team 'nope'"),
    ("this is = not toml [", "not valid TOML"),
])
def test_bad_config_names_key_and_problem(tmp_path, body, expected):
    f = tmp_path / "bad.toml"
    f.write_text(body, encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_config(f, env={})
    assert str(f) in str(e.value) and expected in str(e.value)


def test_bad_environment_value_is_named():
    with pytest.raises(ConfigError, match="server.port"):
        load_config(None, env={"RELAYDESK_SERVER__PORT": "eighty"})


def test_cli_refuses_bad_config_with_exit_2_and_starts_nothing(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("[server]\nport = -1\n", encoding="utf-8")
    r = subprocess.run([sys.executable, "run_bot.py", "--config", str(f)], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2
    assert "server.port" in r.stderr
    assert "RelayDesk on" not in r.stdout


def test_cli_missing_config_file(tmp_path):
    r = subprocess.run([sys.executable, "run_bot.py", "check-config", "--config", str(tmp_path / "nope.toml")],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "file not found" in r.stderr
