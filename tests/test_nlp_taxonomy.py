"""Taxonomy data file: the packaged default and the loader's errors."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from nlp import Classifier, TaxonomyError, load_taxonomy
from nlp.taxonomy import default_taxonomy_path

DOC_IDS = [
    "no_start", "trip", "electric_leak", "smoke_fire", "overheat", "motor", "noise", "vibration",
    "water_leak", "oil_leak", "gas_leak", "pressure", "flow", "inverter_alarm", "control_plc",
    "sensor", "comms", "software", "valve", "seal", "bearing", "clog", "corrosion", "damage",
    "install", "maintenance", "parts", "elevator", "hvac", "security", "lighting", "office_it", "other",
]

MINIMAL = '''
[settings]
fallback = "other"
precedence = ["smoke_fire"]

[grammar]
negations = ["没有", "没", "不"]

[priority]
safety = ["冒烟"]
impact = ["停产"]
can_wait = ["不急"]

[categories.smoke_fire]
name = "冒烟起火"
kind = "fault"
priority = "P0"
safety = true
keywords = ["冒烟", "着火"]

[categories.water_leak]
name = "漏水渗水"
kind = "fault"
priority = "P1"
keywords = ["漏水", "渗水", "滴水", "冒水"]

[categories.other]
name = "其他"
kind = "fallback"
priority = "P2"
keywords = ["你好"]
'''


def write(tmp_path: Path, text: str, name: str = "taxonomy.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_for(tmp_path: Path, text: str) -> TaxonomyError:
    path = write(tmp_path, text)
    with pytest.raises(TaxonomyError) as info:
        load_taxonomy(path)
    message = str(info.value)
    assert str(path) in message, message  # the file is named
    return info.value


# --- the packaged default --------------------------------------------------------------------


def test_default_taxonomy_matches_the_label_guide():
    tax = load_taxonomy()
    assert sorted(tax.categories) == sorted(DOC_IDS)
    assert tax.settings.fallback == "other"
    assert tax.settings.precedence == ("smoke_fire", "electric_leak", "gas_leak")
    names = {cid: cat.name for cid, cat in tax.categories.items()}
    assert names["water_leak"] == "漏水渗水" and names["inverter_alarm"] == "变频器/驱动报警"
    for cat in tax.categories.values():
        assert cat.keywords, cat.id
    # parts, quotes, maintenance, install, other and one lamp default to P2; faults to P1 (smoke/leak: P0)
    assert {c.id for c in tax.categories.values() if c.priority == "P2"} == {
        "install", "maintenance", "parts", "other", "lighting"}
    assert tax.categories["install"].urgent_priority == "P1"
    assert tax.categories["lighting"].urgent_priority == "P1" and "应急灯" in tax.categories["lighting"].urgent_words
    # one lift or air-conditioner stopping is not the business stopping
    assert {c.id for c in tax.categories.values() if not c.stoppage} == {
        "elevator", "hvac", "security", "lighting", "office_it"}


def test_default_taxonomy_ships_the_modifier_words():
    tax = load_taxonomy()
    assert "整条线" in tax.priority.impact_scopes and "停产" in tax.priority.impact
    assert {"不急", "有空", "下周"} <= set(tax.priority.can_wait)
    assert {"没有", "没", "不"} <= set(tax.grammar.negations)
    assert ("漏谁", "漏水") in tax.typos
    assert ("vfd", "变频器") in tax.english and ("pump", "泵") in tax.english


def test_default_file_is_valid_toml_with_comments():
    text = default_taxonomy_path().read_text(encoding="utf-8")
    assert text.lstrip().startswith("#")
    tomllib.loads(text)


def test_label_guide_is_shipped_with_the_repo():
    guide = Path(__file__).resolve().parent.parent / "docs" / "TAXONOMY.md"
    ids = set(re.findall(r"^\| ([a-z_]+) \|", guide.read_text(encoding="utf-8"), re.M))
    assert set(DOC_IDS) <= ids


# --- a deployment's own file -------------------------------------------------------------------


def test_minimal_file_loads_and_classifies(tmp_path):
    clf = Classifier.from_file(write(tmp_path, MINIMAL))
    assert clf.classify("水管滴水了").category == "water_leak"
    assert clf.classify("水管滴水了,不急").priority == "P2"
    assert clf.classify("没有漏水").category == "other"
    assert clf.classify("机房冒烟").priority == "P0"
    assert clf.classify("你好").category == "other"


def test_a_word_with_punctuation_in_it_is_found(tmp_path):
    # clauses are segmented apart at punctuation; a deployment's word may still span it
    clf = Classifier.from_file(write(tmp_path, MINIMAL.replace('"冒水"]', '"冒水", "滴答~滴答"]')))
    assert clf.classify("屋顶一直滴答~滴答的").category == "water_leak"
    assert clf.classify("屋顶一直滴答滴答的").category == "other"


def test_edited_copy_changes_the_classification(tmp_path):
    text = default_taxonomy_path().read_text(encoding="utf-8")
    text += '\n[categories.pool]\nname = "泳池设备"\nkind = "fault"\npriority = "P1"\nkeywords = ["泳池水发绿"]\n'
    clf = Classifier.from_file(write(tmp_path, text))
    res = clf.classify("泳池水发绿了,有空来看看")
    assert (res.category, res.category_name, res.priority) == ("pool", "泳池设备", "P2")
    assert Classifier.default().classify("泳池水发绿了").category == "other"


# --- loader errors: file, entry and problem are named --------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(TaxonomyError) as info:
        load_taxonomy(tmp_path / "nope.toml")
    assert "nope.toml" in str(info.value) and "cannot be read" in str(info.value)


def test_invalid_toml(tmp_path):
    err = error_for(tmp_path, MINIMAL + "\nthis is not toml\n")
    assert "not valid TOML" in str(err)


def test_unknown_key(tmp_path):
    err = error_for(tmp_path, MINIMAL.replace('keywords = ["漏水"', 'keyword = ["x"]\nkeywords = ["漏水"'))
    assert err.entry == "categories.water_leak.keyword"
    assert "unknown key" in err.problem and "keywords" in err.problem  # suggests the right name


def test_unknown_top_level_key(tmp_path):
    err = error_for(tmp_path, "colour = 1\n" + MINIMAL)
    assert err.entry == "colour" and "unknown key" in err.problem


def test_wrong_type_names_the_list_item(tmp_path):
    err = error_for(tmp_path, MINIMAL.replace('["漏水", "渗水", "滴水", "冒水"]', '["漏水", "渗水", "滴水", 12]'))
    assert err.entry == "categories.water_leak.keywords[3]"
    assert "must be a string" in err.problem and "integer" in err.problem
    assert str(err).endswith("categories.water_leak.keywords[3]: must be a string, got an integer")


def test_wrong_type_of_a_list(tmp_path):
    err = error_for(tmp_path, MINIMAL.replace('keywords = ["漏水", "渗水", "滴水", "冒水"]', 'keywords = "漏水"'))
    assert err.entry == "categories.water_leak.keywords" and "list" in err.problem


def test_category_without_keywords(tmp_path):
    err = error_for(tmp_path, MINIMAL.replace('keywords = ["漏水", "渗水", "滴水", "冒水"]\n', ""))
    assert err.entry == "categories.water_leak" and "no keywords" in err.problem


def test_category_with_an_empty_keyword_list(tmp_path):
    err = error_for(tmp_path, MINIMAL.replace('["漏水", "渗水", "滴水", "冒水"]', "[]"))
    assert err.entry == "categories.water_leak.keywords" and "at least one" in err.problem


def test_duplicate_category_id(tmp_path):
    duplicate = '\n[categories.water_leak]\nname = "x"\nkind = "fault"\npriority = "P1"\nkeywords = ["x"]\n'
    err = error_for(tmp_path, MINIMAL + duplicate)
    assert err.entry == "categories.water_leak" and "duplicate category id" in err.problem


def test_bad_priority_name(tmp_path):
    err = error_for(tmp_path, MINIMAL.replace('priority = "P1"', 'priority = "P3"'))
    assert err.entry == "categories.water_leak.priority"
    assert "P3" in err.problem and "P0, P1, P2" in err.problem


def test_unknown_kind(tmp_path):
    err = error_for(tmp_path, MINIMAL.replace('kind = "fault"\npriority = "P1"', 'kind = "broken"\npriority = "P1"'))
    assert err.entry == "categories.water_leak.kind"


def test_unknown_category_in_precedence(tmp_path):
    err = error_for(tmp_path, MINIMAL.replace('precedence = ["smoke_fire"]', 'precedence = ["smoke_fire", "fire"]'))
    assert err.entry == "settings.precedence[1]" and "'fire'" in err.problem


def test_unknown_fallback(tmp_path):
    err = error_for(tmp_path, MINIMAL.replace('fallback = "other"', 'fallback = "misc"'))
    assert err.entry == "settings.fallback"


def test_duplicate_keyword_in_one_list(tmp_path):
    err = error_for(tmp_path, MINIMAL.replace('["漏水", "渗水", "滴水", "冒水"]', '["漏水", "渗水", "漏水"]'))
    assert err.entry == "categories.water_leak.keywords[2]" and "duplicate" in err.problem


def test_keyword_in_two_categories(tmp_path):
    err = error_for(tmp_path, MINIMAL.replace('keywords = ["冒烟", "着火"]', 'keywords = ["冒烟", "着火", "漏水"]'))
    assert "categories.water_leak.keywords[0]" in str(err)
    assert "categories.smoke_fire.keywords[2]" in err.problem


def test_bad_pattern(tmp_path):
    err = error_for(tmp_path, MINIMAL.replace('"冒水"]', '"冒水", "压力*"]'))
    assert err.entry == "categories.water_leak.keywords[4]" and "'*'" in err.problem


def test_typo_table_must_not_hide_a_keyword(tmp_path):
    err = error_for(tmp_path, MINIMAL + '\n[normalize.typos]\n"漏水" = "渗水"\n')
    assert err.entry == "categories.water_leak.keywords[0]" and "normalize.typos" in err.problem


def test_typo_that_changes_nothing(tmp_path):
    err = error_for(tmp_path, MINIMAL + '\n[normalize.typos]\n"漏谁" = "漏谁"\n')
    assert err.entry == 'normalize.typos."漏谁"' and "itself" in err.problem


def test_bad_setting_value(tmp_path):
    err = error_for(tmp_path, MINIMAL.replace('precedence = ["smoke_fire"]', 'precedence = ["smoke_fire"]\nhint_gap = -1'))
    assert err.entry == "settings.hint_gap" and "between" in err.problem


def test_bad_serial_pattern(tmp_path):
    err = error_for(tmp_path, MINIMAL + '\n[entities]\nserial_patterns = ["[A-Z"]\n')
    assert err.entry == "entities.serial_patterns[0]" and "regular expression" in err.problem


def test_missing_required_section(tmp_path):
    err = error_for(tmp_path, MINIMAL.replace("[grammar]\nnegations = [\"没有\", \"没\", \"不\"]\n", ""))
    assert err.entry == "grammar" and "missing" in err.problem


def test_cli_refuses_a_malformed_taxonomy(tmp_path, capsys):
    from nlp.cli import main

    path = write(tmp_path, MINIMAL.replace('priority = "P1"', 'priority = "urgent"'))
    assert main(["--taxonomy", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "categories.water_leak.priority" in err


# --- equipment categories: absorbs, stoppage, urgent and minor words -----------------------------

LIFT = '''
[categories.elevator]
name = "电梯故障"
kind = "fault"
priority = "P1"
stoppage = false
absorbs = ["water_leak"]
keywords = ["困人"]
hints = ["电梯"]
'''


def test_equipment_category_absorbs_and_ignores_a_unit_stopping(tmp_path):
    clf = Classifier.from_file(write(tmp_path, MINIMAL.replace("[categories.other]", LIFT + "\n[categories.other]")))
    assert clf.classify("电梯井里在滴水").category == "elevator"        # the symptom is the lift's
    assert clf.classify("水管滴水了").category == "water_leak"          # no lift named: unchanged
    assert clf.classify("电梯井里冒烟").category == "smoke_fire"       # only fault symptoms are absorbed


def test_absorbs_refuses_an_unknown_or_precedence_category(tmp_path):
    err = error_for(tmp_path, MINIMAL.replace("[categories.other]",
                                              LIFT.replace('["water_leak"]', '["fire"]') + "\n[categories.other]"))
    assert err.entry == "categories.elevator.absorbs[0]" and "'fire'" in err.problem
    err = error_for(tmp_path, MINIMAL.replace("[categories.other]",
                                              LIFT.replace('["water_leak"]', '["smoke_fire"]') + "\n[categories.other]"))
    assert err.entry == "categories.elevator.absorbs[0]" and "precedence" in err.problem


def test_urgent_words_need_an_urgent_priority(tmp_path):
    lamp = '\n[categories.lighting]\nname = "照明"\nkind = "fault"\npriority = "P2"\nkeywords = ["灯不亮"]\nurgent_words = ["全灭"]\n'
    err = error_for(tmp_path, MINIMAL + lamp)
    assert err.entry == "categories.lighting.urgent_words" and "urgent_priority" in err.problem
    clf = Classifier.from_file(write(tmp_path, MINIMAL + lamp.replace('priority = "P2"', 'priority = "P2"\nurgent_priority = "P1"')))
    assert clf.classify("楼道灯不亮").priority == "P2"
    assert clf.classify("车库灯全灭了,灯不亮").priority == "P1"
