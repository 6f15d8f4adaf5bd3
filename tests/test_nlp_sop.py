"""SOP / knowledge cards: the packaged library, lookups and the loader's errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from nlp import Classifier, SopCard, SopLibrary, TaxonomyError
from nlp.sop import default_sop_path

COMMON = ["water_leak", "noise", "no_start", "inverter_alarm", "trip", "smoke_fire", "electric_leak",
          "flow", "pressure", "overheat", "vibration", "motor", "control_plc", "comms", "seal", "bearing",
          "elevator", "hvac", "security", "lighting", "office_it"]


@pytest.fixture(scope="module")
def lib() -> SopLibrary:
    return SopLibrary.default()


@pytest.fixture(scope="module")
def clf() -> Classifier:
    return Classifier.default()


def test_packaged_library_is_valid_against_the_taxonomy(clf):
    lib = SopLibrary.from_file(default_sop_path(), categories=clf.taxonomy.categories)
    for cid in COMMON:
        card = lib.for_category(cid)
        assert isinstance(card, SopCard), cid
        assert card.key == f"category:{cid}"
        assert card.title and 3 <= len(card.steps) <= 6
        assert all(step.strip() for step in card.steps)


def test_a_trapped_lift_gets_the_lift_card(lib, clf):
    card = lib.lookup(clf.classify("电梯困人了"))
    assert card is not None and card.key == "category:elevator"
    assert "被困" in card.steps[0]


def test_ships_vfd_error_code_cards(lib):
    for code in ("E03", "Err07", "E09", "OC1", "F0012", "F30001", "OH"):
        assert lib.for_code(code) is not None, code


def test_code_card_wins_over_category(lib, clf):
    card = lib.lookup(clf.classify("变频器报E03了 SN:BR-2024-00871"))
    assert card is not None and card.key == "code:vfd_overcurrent"
    assert lib.lookup(clf.classify("变频器老报欠压,代码E09")).key == "code:vfd_undervoltage"
    assert lib.lookup(clf.classify("风机变频器报过压 E07,还能手动跑")).key == "code:vfd_overvoltage"


def test_code_spellings_match(lib):
    for spelling in ("E03", "E3", "e-03", "E.03", "Err03"):
        assert lib.for_code(spelling).key == "code:vfd_overcurrent", spelling
    assert lib.for_code("E.OC3").key == "code:vfd_overcurrent"
    assert lib.for_code("ZZ99") is None


def test_code_cards_are_limited_to_their_categories(lib, clf):
    # a VFD code mentioned in a fire report: the fire card, not the VFD card
    res = clf.classify("变频器冒烟了,之前报过F0012,B栋2楼泵房")
    assert res.error_code == "F0012"
    assert lib.lookup(res).key == "category:smoke_fire"
    # an unknown code falls back to the category card
    res = clf.classify("温度探头坏了,仪表报Er-3,显示-20度")
    assert lib.lookup(res).key == "category:sensor"


def test_nothing_for_other(lib, clf):
    assert lib.lookup(clf.classify("发票什么时候能开")) is None
    assert lib.lookup(clf.classify("")) is None


def test_default_is_cached():
    assert SopLibrary.default() is SopLibrary.default()


# --- loader errors ---------------------------------------------------------------------------

GOOD = '''
[categories.water_leak]
title = "漏水"
steps = ["一", "二", "三"]

[codes.overcurrent]
codes = ["E03", "OC*"]
categories = ["inverter_alarm"]
title = "过流"
steps = ["一", "二", "三"]
'''


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sop.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_small_file_loads(tmp_path):
    lib = SopLibrary.from_file(write(tmp_path, GOOD), categories=["water_leak", "inverter_alarm"])
    assert lib.for_category("water_leak").steps == ("一", "二", "三")
    assert lib.for_code("OC2", "inverter_alarm").key == "code:overcurrent"
    assert lib.for_code("OC2", "water_leak") is None


@pytest.mark.parametrize("change, entry, problem", [
    (('steps = ["一", "二", "三"]\n\n[codes', 'steps = ["一", "二"]\n\n[codes'), "categories.water_leak.steps", "3 to 6"),
    (('title = "漏水"', 'titel = "漏水"'), "categories.water_leak.titel", "unknown key"),
    (('codes = ["E03", "OC*"]', 'codes = ["E03", "3*3"]'), "codes.overcurrent.codes[1]", "not an error code"),
    (('categories = ["inverter_alarm"]', 'categories = ["vfd"]'), "codes.overcurrent.categories[0]", "unknown category"),
    (("[categories.water_leak]", "[categories.leak]"), "categories.leak", "unknown category"),
])
def test_loader_errors(tmp_path, change, entry, problem):
    path = write(tmp_path, GOOD.replace(*change, 1))
    with pytest.raises(TaxonomyError) as info:
        SopLibrary.from_file(path, categories=["water_leak", "inverter_alarm"])
    message = str(info.value)
    assert str(path) in message and entry in message and problem in message
