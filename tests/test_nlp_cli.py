"""`python run_bot.py classify`: JSON lines in, JSON lines out."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nlp.cli import main

ROOT = Path(__file__).resolve().parent.parent
FIELDS = ["category", "priority", "serial", "location", "error_code", "phone"]


def run_cli(args: list[str], text: str, tmp_path: Path) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, RELAYDESK_DATA_DIR=str(ROOT / "data"))
    return subprocess.run(
        [sys.executable, str(ROOT / "run_bot.py"), "classify", *args],
        input=text.encode("utf-8"), capture_output=True, cwd=tmp_path, env=env, timeout=60,
    )


def test_subprocess_json_per_line(tmp_path):
    text = "变频器报E03了 SN:BR-2024-00871\n\n1号产线主电机不转了,整条线停了\n   \n你好\r\n"
    proc = run_cli([], text, tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    lines = proc.stdout.decode("utf-8").splitlines()
    assert len(lines) == 5
    rows = [json.loads(line) for line in lines]
    for row in rows:
        assert list(row) == FIELDS
    assert rows[0] == {"category": "inverter_alarm", "priority": "P1", "serial": "BR-2024-00871",
                       "location": None, "error_code": "E03", "phone": None}
    assert rows[1] == {"category": "other", "priority": "P2", "serial": None, "location": None,
                       "error_code": None, "phone": None}
    assert rows[2]["category"] == "motor" and rows[2]["priority"] == "P0" and rows[2]["location"] == "1号产线"
    assert rows[3]["category"] == "other" and rows[3]["priority"] == "P2"
    assert rows[4]["category"] == "other"
    assert "漏" not in proc.stderr.decode("utf-8", "replace")  # nothing but errors on stderr
    assert "Building prefix dict" not in proc.stderr.decode("utf-8", "replace")


def test_subprocess_explain_and_bad_bytes(tmp_path):
    data = "配电柜有点焦味,不急,有空来看看\n".encode("utf-8") + b"\xff\xfe broken\n"
    env = dict(os.environ, RELAYDESK_DATA_DIR=str(ROOT / "data"))
    proc = subprocess.run([sys.executable, str(ROOT / "run_bot.py"), "classify", "--explain"],
                          input=data, capture_output=True, cwd=tmp_path, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    first, second = [json.loads(line) for line in proc.stdout.decode("utf-8").splitlines()]
    assert first["priority"] == "P0" and first["category_name"] == "冒烟起火"
    assert "安全:焦味" in first["evidence"] and "可缓:不急" in first["evidence"]
    assert 0 <= first["score"] <= 1 and "impact" in first
    assert second["category"] == "other"


def test_main_in_process_streams_lines():
    out = io.StringIO()
    assert main(["--explain"], stdin=io.StringIO("水泵有异响,没有漏水\n\n"), stdout=out) == 0
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert rows[0]["category"] == "noise" and "否定:没有漏水" in rows[0]["evidence"]
    assert rows[1]["category"] == "other" and rows[1]["priority"] == "P2" and rows[1]["evidence"] == []


def test_main_accepts_the_subcommand_name():
    out = io.StringIO()
    assert main(["classify"], stdin=io.StringIO("网关离线了,编号GW-3302\n"), stdout=out) == 0
    assert json.loads(out.getvalue()) == {"category": "comms", "priority": "P1", "serial": "GW-3302",
                                          "location": None, "error_code": None, "phone": None}


def test_main_with_sop_cards():
    out = io.StringIO()
    assert main(["--sop"], stdin=io.StringIO("变频器报E03了\n发票什么时候能开\n"), stdout=out) == 0
    first, second = [json.loads(line) for line in out.getvalue().splitlines()]
    assert first["sop"]["key"] == "code:vfd_overcurrent" and 3 <= len(first["sop"]["steps"]) <= 6
    assert second["sop"] is None


def test_main_with_a_taxonomy_file(tmp_path):
    from nlp.taxonomy import default_taxonomy_path

    path = tmp_path / "tax.toml"
    path.write_text(default_taxonomy_path().read_text(encoding="utf-8"), encoding="utf-8")
    out = io.StringIO()
    assert main(["--taxonomy", str(path)], stdin=io.StringIO("电机冒烟了\n"), stdout=out) == 0
    assert json.loads(out.getvalue())["category"] == "smoke_fire"


def test_bad_option_is_a_usage_error(capsys):
    assert main(["--nope"], stdin=io.StringIO(""), stdout=io.StringIO()) == 2
    assert "usage" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["", "\n\n\n"])
def test_empty_input(text):
    out = io.StringIO()
    assert main([], stdin=io.StringIO(text), stdout=out) == 0
    assert all(json.loads(line)["category"] == "other" for line in out.getvalue().splitlines())


def test_worker_processes_keep_the_order(tmp_path):
    reports = ["电梯困人了", "在吗", "3号楼电梯不动了", "变频器报E03了", "18楼会议室空调不制冷", ""] * 250
    text = "".join(f"{r}\n" for r in reports)
    one = run_cli(["--jobs=1"], text, tmp_path)
    two = run_cli(["--jobs=2"], text, tmp_path)
    assert one.returncode == two.returncode == 0, two.stderr.decode()
    assert one.stdout == two.stdout
    rows = [json.loads(line) for line in two.stdout.decode("utf-8").splitlines()]
    assert len(rows) == len(reports)
    assert [r["category"] for r in rows[6:12]] == ["elevator", "other", "elevator", "inverter_alarm", "hvac", "other"]


def test_jobs_below_one_is_refused(tmp_path):
    proc = run_cli(["--jobs=0"], "你好\n", tmp_path)
    assert proc.returncode == 2 and proc.stdout == b""
    assert "--jobs" in proc.stderr.decode()
