"""Ticket numbers: layout, and the check code catching typing mistakes."""
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.core.numbers import check_code, find_number, format_number, parse_number

TYPABLE = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ-"
days = st.dates().map(lambda d: d.strftime("%Y%m%d"))
seqs = st.integers(min_value=1, max_value=99999)
domains = st.sampled_from(["SRV", "IT", "FAC", "HVAC"])


def test_layout():
    n = format_number("SRV", "20260126", 872)
    assert n.startswith("SRV-20260126-00872-") and len(n) == len("SRV-20260126-00872-A9F")
    assert parse_number(n).seq == 872
    assert parse_number(n.lower()).number == n
    assert parse_number(f"  {n} ") is not None


def _accepts_as_other(original: str, typed: str) -> bool:
    parsed = parse_number(typed)
    return parsed is not None and parsed.number != original


@settings(max_examples=300, deadline=None)
@given(domains, days, seqs)
def test_every_single_character_error_is_caught(domain, day, seq):
    n = format_number(domain, day, seq)
    for i, original in enumerate(n):
        for c in TYPABLE:
            if c == original:
                continue
            typed = n[:i] + c + n[i + 1:]
            assert not _accepts_as_other(n, typed), (n, typed)


@settings(max_examples=300, deadline=None)
@given(domains, days, seqs)
def test_every_adjacent_transposition_is_caught(domain, day, seq):
    n = format_number(domain, day, seq)
    for i in range(len(n) - 1):
        if n[i] == n[i + 1]:
            continue
        typed = n[:i] + n[i + 1] + n[i] + n[i + 2:]
        assert not _accepts_as_other(n, typed), (n, typed)


def test_crockford_lookalikes_in_the_check_code_are_read_as_meant():
    for seq in range(1, 400):
        n = format_number("SRV", "20260126", seq)
        code = n[-3:]
        typed = n[:-3] + code.replace("0", "O").replace("1", "I")
        assert parse_number(typed).number == n


def test_garbage_is_refused():
    for bad in ["", "SRV", "SRV-2026-1-ABC", "SRV-20260126-00000-" + check_code("SRV", "20260126", 0),
                "srv-20260126-00872", "SRV-20260126-00872-0J5X"]:
        assert parse_number(bad) is None


def test_find_number_in_chat_text():
    n = format_number("SRV", "20260126", 872)
    assert find_number(f"进度 {n} 谢谢") == n
    assert find_number("进度 谢谢") is None
