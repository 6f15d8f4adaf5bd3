"""Fault-report classifier: rules of docs/TAXONOMY.md, robustness to chat input, entities."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nlp import Classification, Classifier
from nlp.segment import cache_dir

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def clf() -> Classifier:
    return Classifier.default()


def load(name: str) -> list[dict]:
    with open(DATA / name, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def accuracy(clf: Classifier, rows: list[dict]) -> tuple[float, float]:
    results = [clf.classify(r["text"]) for r in rows]
    cat = sum(r["category"] == res.category for r, res in zip(rows, results)) / len(rows)
    pri = sum(r["priority"] == res.priority for r, res in zip(rows, results)) / len(rows)
    return cat, pri


def entity_f1(clf: Classifier, rows: list[dict]) -> float:
    tp = fp = fn = 0
    for row in rows:
        res = clf.classify(row["text"])
        for field in ("serial", "location", "error_code", "phone"):
            gold, pred = row.get(field), getattr(res, field)
            if field == "phone" and gold is not None:
                gold = re.sub(r"\D", "", gold)  # 138-6712-0453 is the number 13867120453
            if gold is not None and pred == gold:
                tp += 1
            else:
                fp += pred is not None
                fn += gold is not None
    return 2 * tp / (2 * tp + fp + fn)


# --- accuracy on the labelled sets ---------------------------------------------------------


@pytest.mark.parametrize("name", ["reports-dev.jsonl", "reports-facility-dev.jsonl", "reports-noisy.jsonl"])
def test_labelled_sets_accuracy(clf, name):
    rows = load(name)
    cat, pri = accuracy(clf, rows)
    assert cat >= 0.95, f"category accuracy {cat:.3f}"
    assert pri >= 0.95, f"priority accuracy {pri:.3f}"
    assert entity_f1(clf, rows) >= 0.9


# --- precedence --------------------------------------------------------------------------


@pytest.mark.parametrize("text, category", [
    ("电机冒烟了", "smoke_fire"),                          # smoke beats the motor
    ("水泵漏水而且有异响", "water_leak"),                   # the lead symptom
    ("3号泵异响,地上也在滴水", "noise"),                    # the lead symptom, the other way round
    ("空压机异响,管子那边也在漏气", "gas_leak"),            # gas_leak outranks the lead symptom
    ("水泵外壳带电,旁边气管也在漏气", "electric_leak"),     # electric_leak > gas_leak
    ("控制柜外壳麻手,里面还有火花", "smoke_fire"),          # smoke_fire > electric_leak
    ("水泵开不了机,面板显示E21", "no_start"),               # a code alone does not make it inverter_alarm
    ("1号泵房控制柜报警,HMI显示AL-05", "control_plc"),      # a PLC showing a code is control_plc
    ("风机轴承温度高,还在跑", "bearing"),                   # part + symptom names the part
    ("泵抖得厉害,轴承那里也发烫", "vibration"),
    ("轴承备件能寄过来吗", "parts"),                        # a part named in a purchase is parts
    ("仪表有点偏差,不急,下次巡检时校一下", "sensor"),       # a fault beats the maintenance word
    ("好的收到", "other"),
])
def test_category_precedence(clf, text, category):
    assert clf.classify(text).category == category


# --- priority and modifiers --------------------------------------------------------------


@pytest.mark.parametrize("text, priority", [
    ("配电柜有点焦味,不急,有空来看看", "P0"),              # safety ignores "can wait"
    ("电机冒烟了", "P0"),
    ("水箱一直冒水,电梯机房都被水淹了", "P0"),             # flooding
    ("2号锅炉房有燃气味", "P0"),                           # gas smell
    ("冷库制冷机组冷媒泄漏,温度降不下来", "P1"),           # a refrigerant leak is not a gas smell
    ("1号产线主电机不转了,整条线停了", "P0"),              # stoppage of the line
    ("供水压力上不去,整个小区高区全停水了", "P0"),
    ("7号楼管道共振,整栋楼都能听到", "P1"),                # a scope word without a stop word
    ("风机电机缺相转不起来,备用的顶上了", "P1"),           # backup running: degraded
    ("3台空压机有一台开不了机了", "P1"),                   # one of several
    ("物业这边,消防泵启动不了,没有备用的,赶紧来", "P0"),   # explicitly no backup
    ("离心机振动超标停机了", "P0"),                         # stopped, no backup
    ("空压机超温停了两次,重启能用", "P1"),                  # intermittent, recovers
    ("循环泵漏水,不急,下周安排人来就行", "P2"),             # can wait lowers P1
    ("手机端偶尔闪退,不急", "P2"),
    ("减速机那边咔哒咔哒的响,赶紧来人看看", "P1"),         # urgency alone does not make P0
    ("新设备到了急着试机,明天能来人调试吗", "P1"),         # pressed install
    ("下周想移机,麻烦安排个师傅", "P2"),                   # install default
    ("麻烦报个价,变频器风扇要2个", "P2"),                  # parts default
    ("空压机该保养了,帮忙约个时间", "P2"),                 # maintenance default
    ("下周停机保养,麻烦安排", "P2"),                        # a planned stop is not a stoppage
    ("请问周末有人值班吗", "P2"),
    ("电机烫手,还在转,正常吗", "P1"),                       # a fault without modifiers
])
def test_priority_rules(clf, text, priority):
    assert clf.classify(text).priority == priority


def test_evidence_explains_p0(clf):
    res = clf.classify("配电柜有点焦味,不急,有空来看看")
    assert "安全:焦味" in res.evidence
    assert "可缓:不急" in res.evidence
    res = clf.classify("驱动器报警AL-21,伺服不动了,整条线停")
    assert res.priority == "P0"
    assert res.impact is not None and "整条线" in res.impact
    assert any(e.startswith("影响:") for e in res.evidence)


@pytest.mark.parametrize("text, category, priority", [
    ("电梯困人了", "elevator", "P0"),                         # people trapped
    ("电梯坏了", "elevator", "P1"),
    ("2号梯停了,其他几部正常", "elevator", "P1"),             # one lift out of several
    ("电梯停在3楼不动,整栋楼就这一部电梯", "elevator", "P0"), # no other lift
    ("电梯运行的时候咯噔咯噔响", "elevator", "P1"),           # the lift's noise is the lift's
    ("会议室空调不冷", "hvac", "P1"),                          # one room
    ("手术室空调停了", "hvac", "P0"),                          # patients at risk
    ("冷库升温货要坏了", "hvac", "P0"),                        # goods at risk
    ("空调漏水滴到桌上", "water_leak", "P1"),                  # the leak, not the cooling
    ("监控没画面", "security", "P1"),
    ("楼道灯坏了", "lighting", "P2"),                          # one lamp
    ("车库灯全灭了", "lighting", "P1"),                        # a whole area dark
    ("打印机卡纸", "office_it", "P2"),                         # a printer jam
    ("我电脑连不上wifi,别人都能连", "office_it", "P1"),        # one person's device
    ("办公室网络全断了", "comms", "P0"),                       # the office's network
    ("ERP登录不上,全公司都进不去", "software", "P0"),          # the whole company
    ("注塑机液压油管爆了,油喷了一地", "oil_leak", "P1"),
    ("烟感响了", "smoke_fire", "P0"),                          # a smoke detector going off
])
def test_buildings_and_offices(clf, text, category, priority):
    res = clf.classify(text)
    assert (res.category, res.priority) == (category, priority)


@pytest.mark.parametrize("text, impact", [
    ("1号线变频器报E03,整条线都停了", "整条线都停了"),
    ("二车间输送带电机趴了 转不起来 线上全停着", "线上全停着"),
    ("冷库温度上来了 里面几吨冻肉要化了", "里面几吨冻肉要化了"),
    ("MES系统挂了,整个厂没法排产,全停了", "整个厂没法排产"),
])
def test_impact_is_a_readable_clause(clf, text, impact):
    assert clf.classify(text).impact == impact


# --- negation ----------------------------------------------------------------------------


@pytest.mark.parametrize("text, category, priority", [
    ("水泵有异响,没有漏水", "noise", "P1"),
    ("没冒烟也没跳闸,就是电机特别烫", "overheat", "P1"),
    ("我们这没有漏电,就是空开老跳", "trip", "P1"),
    ("循环泵有异响,但是不影响生产", "noise", "P1"),
    ("设备没停机,就是变频器报E07", "inverter_alarm", "P1"),
    ("电机转速不稳,变频器没报警", "motor", "P1"),
    ("泵漏水了,没有淹到设备", "water_leak", "P1"),
    ("不是漏水,是漏油", "oil_leak", "P1"),
    ("不锈钢水箱底部锈了", "corrosion", "P1"),              # 不锈钢 is not a negation
    ("上次漏水修好了,这次是振动太大", "vibration", "P1"),   # a fixed problem does not count
    ("配电柜没有冒烟,就是有点响", "noise", "P1"),            # 没有冒烟 is not smoke
    ("摄像头有三个没画面了", "security", "P1"),              # 没画面 is the fault itself
    ("空调没有漏水,就是不制冷", "hvac", "P1"),
    ("不是漏水是渗水,墙角一直潮", "water_leak", "P1"),
])
def test_negation(clf, text, category, priority):
    res = clf.classify(text)
    assert (res.category, res.priority) == (category, priority)


def test_negation_is_reported(clf):
    res = clf.classify("水泵有异响,没有漏水")
    assert "否定:没有漏水" in res.evidence


def test_negation_only_reaches_nearby_words(clf):
    # the negation belongs to 漏水, not to the smoke mentioned after 但是
    assert clf.classify("没有漏水,但是接线盒冒烟了").category == "smoke_fire"


# --- chat and voice input ----------------------------------------------------------------


@pytest.mark.parametrize("text, category, priority", [
    ("水泵从昨天开始就漏谁,地上湿了一大片", "water_leak", "P1"),  # homophone typo
    ("空压机跳匝了,合上又跳", "trip", "P1"),
    ("电机接线盒冒火化了!", "smoke_fire", "P0"),
    ("電機冒煙了!!!快來人", "smoke_fire", "P0"),                  # traditional characters
    ("油封那里在滲油,不著急", "oil_leak", "P2"),
    ("ＶＦＤ报警ＯＣ２，复位后能跑", "inverter_alarm", "P1"),      # full-width forms
    ("the pump is leaking, 地上一滩水", "water_leak", "P1"),       # English mixed in
    ("VFD error F0003, motor won't run, 5号产线停了", "inverter_alarm", "P0"),
    ("water leaking from pump, not urgent", "water_leak", "P2"),
    ("🔥🔥电箱冒烟了🔥", "smoke_fire", "P0"),                        # emoji
    ("😭😭水泵又不出水了,还能用另一台", "flow", "P1"),
    ("plc 死机 了 整 条 线 停 了", "control_plc", "P0"),            # voice input with spaces
    ("王工你好,上次你们来修过的那台离心泵,用了两个月,今天早上操作工反映声音不对,"
     "另外泵体温度也有点高,麻烦尽快安排人过来看看", "noise", "P1"),  # greeting and long context
])
def test_chat_and_voice_input(clf, text, category, priority):
    res = clf.classify(text)
    assert (res.category, res.priority) == (category, priority)


@pytest.mark.parametrize("text, category, priority", [
    ("减速机漏由,油封那块一直往外渗", "oil_leak", "P1"),            # homophone of 油
    ("潜水泵漏点了,漏保一直跳", "electric_leak", "P0"),              # homophone of 电
    ("水泵震东很大,地脚螺丝都松了", "vibration", "P1"),
    ("壓力變送器讀數不準,跟現場錶差很多", "sensor", "P1"),          # traditional characters
    ("系統當機,無法登入", "software", "P1"),                         # regional wording
    ("觸控螢幕沒反應,點不動", "control_plc", "P1"),
    ("ＰＬＣ報警ＡＬ－０５,整線停了", "control_plc", "P0"),           # full-width forms
    ("network断了,看不到数据", "comms", "P1"),                       # English mixed in
    ("The chiller is overheating, 温度一直降不下来,还在运行", "overheat", "P1"),
    ("没冒烟,就是电机烫得厉害,还在转", "overheat", "P1"),           # negation
    ("没有漏水,就是声音很大,嗡嗡的", "noise", "P1"),
    ("不是漏水,是泵那边有尖叫声", "noise", "P1"),                    # a sound word ending in 声
    ("车间有液化气的味道,人都撤出来了", "gas_leak", "P0"),           # gas smell is a hazard
    ("食堂有天然气的味道,比较浓", "gas_leak", "P0"),
    ("电梯困人了", "elevator", "P0"),                                # people trapped
    ("空压机压力打不上去,车间气动设备都用不了,全停了", "pressure", "P0"),
    ("螺杆泵不出料,流量为零", "flow", "P1"),
    ("HMI一直卡在开机画面,进不去", "control_plc", "P1"),
    ("冷库门封条破了,门关不严", "seal", "P1"),                       # a door gasket, not a valve
    ("外壳有个凹坑,不影响用,不急", "damage", "P2"),                 # cosmetic damage
    ("阀门关不严,明天来也行", "valve", "P2"),                        # "can wait" wording
    ("轴承有点响,不是很着急", "bearing", "P2"),
    ("收银系统登录不了,全公司没法营业", "software", "P0"),           # company-wide stoppage
    ("空调不制冷", "hvac", "P1"),
    ("合同什么时候寄过来", "other", "P2"),                           # an errand, not a parts order
])
def test_voice_regional_and_mixed_reports(clf, text, category, priority):
    res = clf.classify(text)
    assert (res.category, res.priority) == (category, priority)


def test_domain_words_stay_whole(clf):
    seg = clf._lexicon.segmenter
    for word in ("变频器", "机封", "跳闸", "缺相", "抱轴"):
        assert word in seg.cut(f"我们的{word}有问题")


def test_ordinary_words_do_not_trigger_keywords(clf):
    # 响 inside 影响, 流量 inside 流量计, 漏电 inside 漏电开关
    assert clf.classify("这个会影响交货吗").category == "other"
    assert clf.classify("流量计不准,和实际差太多").category == "sensor"
    assert clf.classify("漏电开关一合就跳").category == "trip"


# --- entities ------------------------------------------------------------------------------


@pytest.mark.parametrize("text, field, value", [
    ("变频器报E03了 SN:BR-2024-00871", "serial", "BR-2024-00871"),
    ("你好 编号P3021的设备开不了机", "serial", "P3021"),
    ("设备编号是KP2023-114,电机不转了", "serial", "KP2023-114"),
    ("序列號：ＢＲ－２０２２－００４５６　水泵漏水", "serial", "BR-2022-00456"),
    ("S/N FM-2023-0088 流量计读数不对", "serial", "FM-2023-0088"),
    ("电话13812345678,泵不出水了", "phone", "13812345678"),
    ("电话:139 1234 5678", "phone", "13912345678"),
    ("手机 +86 158-0037-2916，变频器报警", "phone", "15800372916"),
    ("1号产线主电机不转了", "location", "1号产线"),
    ("想约季度巡检,B栋2楼泵房那几台", "location", "B栋2楼泵房"),
    ("二车间变频器显示OC1", "location", "二车间"),
    ("空压机装好了,地址是滨海工业园5号厂房", "location", "滨海工业园5号厂房"),
    ("A栋楼顶冷却塔风机尖叫", "location", "A栋楼顶"),
    ("4#线空压机跳闸", "location", "4#线"),
    ("原料车间地上一摊油", "location", "原料车间"),
    ("4号产线变频器报F0012,线停了", "error_code", "F0012"),
    ("驱动器报警AL-21,伺服不动了", "error_code", "AL-21"),
    ("变频器报Err07,电机停了", "error_code", "Err07"),
    ("485通讯中断,触摸屏报E-31", "error_code", "E-31"),
    ("变频器显示这个,E.OC3 是什么意思", "error_code", "E.OC3"),
    # places as people write them: the longest span, named rooms, in their own characters
    ("阳光花园5号楼1单元的电梯卡在6楼7楼中间", "location", "阳光花园5号楼1单元"),
    ("7号楼3单元602 空开一直跳", "location", "7号楼3单元602"),
    ("B1停车场道闸不抬杆", "location", "B1停车场"),
    ("18楼会议室空调不制冷", "location", "18楼会议室"),
    ("东区泵房的水泵有异响", "location", "东区泵房"),
    ("配电房总闸跳了", "location", "配电房"),
    ("锅炉房有燃气味", "location", "锅炉房"),
    ("市一医院3号手术室空调不制冷了", "location", "市一医院3号手术室"),
    ("一樓大堂的吊燈滅了一半", "location", "一樓大堂"),
    ("电脑蓝屏了 代码0x0000007B", "error_code", "0x0000007B"),
    ("分拣机的驱动器亮Err 7", "error_code", "Err 7"),
    ("液压站压力只能打到8兆帕 屏上报P-02", "error_code", "P-02"),
])
def test_entities(clf, text, field, value):
    assert getattr(clf.classify(text), field) == value


@pytest.mark.parametrize("text", [
    "你好,车间那台空压机有异响",     # vague place
    "3号泵又不出水了",                # a device name, not a place
    "楼下的水泵漏水",
    "整个车间都没电了",
    "设备要移机,从老厂房搬到新厂房",  # relative names
    "2号冷却塔风机坏了",                # a device with a number is not a place
    "人已经送医院了",
])
def test_vague_places_are_not_locations(clf, text):
    assert clf.classify(text).location is None


def test_error_code_does_not_swallow_serial_or_phone(clf):
    res = clf.classify("Y型过滤器又堵了,编号F-2207,电话13775208863")
    assert res.serial == "F-2207"
    assert res.phone == "13775208863"
    assert res.error_code is None


def test_missing_entities_are_none(clf):
    res = clf.classify("你好")
    assert (res.serial, res.location, res.error_code, res.phone) == (None, None, None, None)


# --- result object and robustness -------------------------------------------------------------


def test_classification_shape(clf):
    res = clf.classify("2号线的主泵启动不了,整条线都停了,电话13311872054")
    assert isinstance(res, Classification)
    assert res.category == "no_start" and res.category_name == "无法启动"
    assert 0.0 <= res.score <= 1.0
    with pytest.raises(AttributeError):
        res.category = "other"  # type: ignore[misc]
    assert res.as_dict() == {"category": "no_start", "priority": "P0", "serial": None,
                             "location": "2号线", "error_code": None, "phone": "13311872054"}
    explained = res.as_dict(explain=True)
    assert explained["category_name"] == "无法启动"
    assert isinstance(explained["evidence"], list) and explained["evidence"]
    assert explained["impact"] and "停" in explained["impact"]


@pytest.mark.parametrize("text", ["", "   ", "\n", "\x00", "🔥", "a" * 50_000, "\ud800漏水"])
def test_odd_input_gives_a_result(clf, text):
    res = clf.classify(text)
    assert res.priority in ("P0", "P1", "P2")
    json.dumps(res.as_dict(explain=True), ensure_ascii=False).encode("utf-8")


def test_empty_report_is_other_p2(clf):
    res = clf.classify("")
    assert (res.category, res.priority) == ("other", "P2")


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200))
def test_never_raises_on_any_text(text):
    # the inner method: the public one also guards against surprises, which would hide a bug here
    res = Classifier.default()._classify(text)
    assert res.priority in ("P0", "P1", "P2")
    assert res.category in Classifier.default().taxonomy.categories


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["漏水", "不", "没有", "冒烟", "整条线", "停了", "不急", "变频器", "报",
                                 "E03", ",", " ", "备用", "轴承", "温度高", "3号", "楼", "SN:", "AB-1234"]),
                max_size=12))
def test_never_raises_on_keyword_soup(parts):
    res = Classifier.default()._classify("".join(parts))
    assert res.priority in ("P0", "P1", "P2")


def test_default_is_cached():
    assert Classifier.default() is Classifier.default()


def test_classify_is_fast(clf):
    texts = [r["text"] for r in load("reports-dev.jsonl")]
    for t in texts:
        clf.classify(t)
    start = time.perf_counter()
    for _ in range(3):
        for t in texts:
            clf.classify(t)
    per_report = (time.perf_counter() - start) / (3 * len(texts))
    assert per_report < 0.002  # well under a millisecond on an idle machine


# --- jieba cache location --------------------------------------------------------------------


def test_cache_dir_honours_env(tmp_path, monkeypatch):
    monkeypatch.setenv("RELAYDESK_DATA_DIR", str(tmp_path / "d"))
    assert cache_dir() == tmp_path / "d"
    assert (tmp_path / "d").is_dir()


def test_cache_dir_falls_back_to_user_cache(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("RELAYDESK_DATA_DIR", str(blocker / "sub"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "relaydesk"


@pytest.mark.parametrize("text, location", [
    ("金地花园3栋2单元1201空调不制冷", "金地花园3栋2单元1201"),
    ("A座15层男卫生间漏水", "A座15层男卫生间"),
    ("人民医院门诊楼3楼护士站电脑蓝屏", "人民医院门诊楼3楼护士站"),
    ("星河湾小区南门道闸不抬杆", "星河湾小区南门"),
])
def test_building_places(clf, text, location):
    assert clf.classify(text).location == location
