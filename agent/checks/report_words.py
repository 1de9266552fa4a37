"""The inspection report's words: every string it prints, in English and Simplified Chinese, and
numbers, dates and durations written the way each language writes them.

A small catalogue of our own (two languages, a few hundred strings) rather than gettext and
Babel: Babel's locale data alone is some ten megabytes a gateway would carry for two languages.
Rules: both languages hold the same keys (a test checks it); placeholders are `str.format`
fields; what goes into a template is plain text (the template escapes it). Check ids get a
plain name per check (`check_name`) and the action a site owner can take (`check_action`); an
id this catalogue does not know is shown as it is. The agent's own messages (alarms, anomaly
details) are English, made when it evaluated: an English report quotes them; a Chinese one
says what was measured against what limit, in its own words (`measured`, `anomaly_detail`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, tzinfo
from typing import Final

from agent.checks.framework import Scalar
from agent.config_base import Language

LANGUAGES: Final[tuple[Language, ...]] = ("en", "zh")
_MONTHS_EN = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

EN: Final[Mapping[str, str]] = {
    # -- header --
    "title": "Inspection report",
    "site": "Site",
    "location": "Location",
    "owner": "Owner",
    "contact": "Contact",
    "gateway": "Gateway",
    "period": "Period",
    "period_value": "{start} to {end} ({length})",
    "generated": "Generated",
    "zone": "Times in {zone}.",
    "clamped": "The history begins on {when}: the period starts there.",
    # -- conclusion --
    "conclusion": "Conclusion",
    "c_all_ok": "In the {length} from {start} to {end}, all {count} terminals delivered their data (completeness {completeness} on average).",
    "c_one_ok": "In the {length} from {start} to {end}, its one terminal delivered its data (completeness {completeness}).",
    "c_some": "In the {length} from {start} to {end}, {good} of {count} terminals delivered all their data; completeness was {completeness} on average, the worst being {worst} ({worst_completeness}).",
    "c_none": "In the {length} from {start} to {end}, no terminal was expected to report.",
    "c_never_ran": "In the {length} from {start} to {end}, the agent on the gateway did not run: no data was collected.",
    "c_off": "The agent on the gateway was not running for {duration} in all (the longest stretch from {start} to {end}): no data was collected in that time, and the figures count only the time it ran.",
    "c_dead": "{terminal} sent no data at all ({duration} without data).",
    "c_short": "{terminal} was without data for {duration} ({completeness} complete).",
    "c_bad": "{terminal} delivered only {completeness} of its readings good.",
    "c_more": "{count} more terminals were incomplete.",
    "c_checks": "Also failing: {items}.",
    "c_check_item": "{name} for {duration}",
    "c_open": "Alarms still open at the end of the period: {count}.",
    "c_no_history": "There is no earlier history to compare with.",
    "c_same": "Against the previous {length}, completeness is unchanged ({now}).",
    "c_up": "Against the previous {length}, completeness rose from {before} to {now}.",
    "c_down": "Against the previous {length}, completeness fell from {before} to {now}.",
    "c_worse": "Worse than before: {items}.",
    "c_better": "Better than before: {items}.",
    "c_change_item": "{terminal} ({before} → {now})",
    "c_todo": "What to do: {items}.",
    "c_nothing": "Nothing needs to be done.",
    "field": "{label}: {value}",
    "list_sep": "; ",
    "sentence_sep": " ",
    # -- actions --
    "do_off": "unless the gateway was stopped on purpose, check its power supply and that the agent runs",
    "do_dead": "check the power, cabling and address of {terminal}",
    "do_link": "check the link to {terminal}",
    "do_sensor": "check the sensor of {point}",
    "do_disk": "free space on the gateway's disk",
    "do_storage": "have the gateway's storage card checked",
    "do_clock": "check the gateway's clock and its time synchronisation",
    "do_resources": "have support check the gateway's load and temperature",
    "do_software": "have support look at the agent (restarts, errors, configuration)",
    "do_uplink": "check the uplink (4G or fibre) and the server it sends to",
    "do_schedule": "have support review the polling schedule",
    "do_security": "have support fix the gateway's security findings",
    "do_support": "have support look at: {check}",
    # -- key figures --
    "key_figures": "Key figures",
    "col_figure": "figure",
    "col_value": "value",
    "fig_status": "overall status (worst check in the period)",
    "fig_completeness": "data completeness (mean of the terminals)",
    "fig_availability": "terminal availability (mean of the terminals)",
    "fig_worst": "worst terminal",
    "worst_value": "{terminal}: {completeness} complete",
    "fig_terminals": "terminals",
    "fig_alarms": "alarms raised / cleared",
    "fig_anomalies": "anomalies found",
    "fig_failing": "checks that failed",
    "fig_starts": "agent starts",
    "fig_off": "time the agent was not running",
    "status_ok": "ok",
    "status_warn": "warning",
    "status_fail": "failing",
    "status_unknown": "unknown",
    "status_none": "no checks recorded",
    "na": "n/a",
    # -- terminals --
    "terminals_head": "Terminals: availability and data completeness",
    "chart_completeness": "Data completeness per terminal",
    "col_terminal": "terminal",
    "col_availability": "availability",
    "col_polls": "polls answered / expected",
    "col_completeness": "completeness",
    "col_readings": "readings received / expected",
    "col_bad": "bad readings",
    "col_missing": "time without data",
    "col_previous": "previous completeness",
    "col_change": "change",
    "no_terminals": "No terminal in this period.",
    "verdict_better": "better",
    "verdict_worse": "worse",
    "verdict_same": "same",
    "verdict_none": "no data",
    # -- comparison --
    "compare_head": "Compared with the previous period",
    "previous_period": "Previous period: {start} to {end}.",
    "col_this": "this period",
    "col_before": "previous period",
    "cmp_completeness": "data completeness (mean)",
    "cmp_availability": "availability (mean)",
    "cmp_terminal": "completeness of {terminal}",
    "cmp_alarms": "alarms raised",
    "cmp_anomalies": "anomalies found",
    "cmp_failing": "checks that failed",
    "cmp_starts": "agent starts",
    # -- events --
    "events_head": "Alarms, checks and anomalies",
    "alarms_head": "Alarms ({raised} raised, {cleared} cleared)",
    "col_time": "time",
    "col_check": "check",
    "col_action": "action",
    "col_status": "status",
    "col_message": "message",
    "action_raised": "raised",
    "action_cleared": "cleared",
    "action_changed": "changed",
    "no_alarms": "No alarm.",
    "more": "… and {count} more.",
    "checks_head": "Checks that were not ok",
    "col_worst": "worst status",
    "col_fail_time": "time failing",
    "col_warn_time": "time warning",
    "checks_ok": "Every check stayed ok.",
    "no_checks": "No check was recorded in this period.",
    "up_to": "up to {duration}",
    "anomalies_head": "Anomalies ({count})",
    "col_point": "point",
    "col_kind": "kind",
    "col_count": "count",
    "col_first": "first",
    "col_last": "last",
    "col_detail": "latest detail",
    "kind_range": "out of range",
    "kind_stuck": "stuck",
    "kind_spike": "spike",
    "kind_gap": "gap",
    "kind_counter": "counter went back",
    "no_anomalies": "No anomaly.",
    "measured": "value {value}, threshold {threshold}",
    "measured_value": "value {value}",
    "measured_threshold": "threshold {threshold}",
    "detail_range": "value {value}",
    "detail_stuck": "stayed at {value}",
    "detail_spike": "jumped to {value}",
    "detail_gap": "{value} samples missing",
    "detail_counter": "went back to {value}",
    "starts_head": "Agent starts",
    # -- trends --
    "trends_head": "Trends of key points (hourly mean; band: min to max)",
    "trend_caption": "min {min} · mean {mean} · max {max} · {count} samples",
    "no_values": "no numeric values in the period",
    "no_data": "no data",
    "point_name": "{terminal}: {label}",
    # -- durations and dates --
    "seconds": "{n} s",
    "minutes": "{n} min",
    "hours": "{h} h",
    "hours_minutes": "{h} h {m} min",
    "day": "1 day",
    "days": "{d} days",
    "days_hours": "{days} {h} h",
    # -- the units of the checks' values (other units are written as they are) --
    "unit.%": "{n}%",
    "unit.s": "{n} s",
    "unit.days": "{n} days",
    "unit.messages": "{n} messages",
    "unit.samples": "{n} samples",
    "unit.spikes": "{n} spikes",
    "unit.problems": "{n} problems",
    # -- checks: what was wrong (the report lists only checks that were not ok) --
    "check.system.disk": "gateway disk nearly full",
    "check.system.inodes": "gateway file system out of file entries",
    "check.system.memory": "gateway memory low",
    "check.system.load": "gateway overloaded",
    "check.system.cpu_temp": "gateway too hot",
    "check.system.fs_writable": "gateway storage not writable",
    "check.system.clock_sync": "gateway clock not synchronised",
    "check.system.clock": "terminal clocks disagree with the gateway",
    "check.software.version": "agent version",
    "check.software.python": "Python version",
    "check.software.os": "operating system",
    "check.software.config": "configuration file has errors",
    "check.software.restarts": "agent restarted often",
    "check.software.log_errors": "agent logged errors",
    "check.network.broker_dns": "server name not found",
    "check.network.broker_tcp": "server not reachable",
    "check.network.uplink": "uplink often down",
    "check.network.backlog": "data waiting to be sent",
    "check.network.evictions": "old data dropped before it was sent",
    "check.network.acks": "server not acknowledging data",
    "check.terminals.success": "{target} did not answer every poll",
    "check.terminals.latency": "{target} answered slowly",
    "check.terminals.freshness": "data from {target} is stale",
    "check.terminals.bus": "serial line {target} overloaded",
    "check.terminals.overload": "gateway behind its polling schedule",
    "check.data.range": "{target} out of range",
    "check.data.stuck": "{target} stuck at one value",
    "check.data.spike": "{target} jumped",
    "check.data.gap": "{target} has gaps",
    "check.data.counter": "{target} counter went back",
    "check.security.files": "unsafe file permissions",
    "check.security.cert_expiry": "certificate expires soon",
    "check.security.root": "agent runs as root",
}

ZH: Final[Mapping[str, str]] = {
    "title": "巡检报告",
    "site": "站点",
    "location": "位置",
    "owner": "业主",
    "contact": "联系人",
    "gateway": "网关",
    "period": "报告期",
    "period_value": "{start} 至 {end}（{length}）",
    "generated": "生成时间",
    "zone": "时间均为 {zone}。",
    "clamped": "历史记录始于 {when}，报告期从此开始。",
    "conclusion": "结论",
    "c_all_ok": "{start} 至 {end}（{length}）期间，全部 {count} 个终端数据正常（平均完整率 {completeness}）。",
    "c_one_ok": "{start} 至 {end}（{length}）期间，唯一的终端数据正常（完整率 {completeness}）。",
    "c_some": "{start} 至 {end}（{length}）期间，{count} 个终端中有 {good} 个数据完整；平均完整率 {completeness}，最差的是 {worst}（{worst_completeness}）。",
    "c_none": "{start} 至 {end}（{length}）期间，没有应上报数据的终端。",
    "c_never_ran": "{start} 至 {end}（{length}）期间，网关上的采集软件没有运行，未采集到任何数据。",
    "c_off": "网关上的采集软件共有 {duration} 未运行（最长一次从 {start} 到 {end}），这段时间没有采集数据，各项指标只计算软件运行的时间。",
    "c_dead": "{terminal} 完全没有数据（缺数 {duration}）。",
    "c_short": "{terminal} 缺数 {duration}（完整率 {completeness}）。",
    "c_bad": "{terminal} 的有效数据仅占 {completeness}。",
    "c_more": "另有 {count} 个终端数据不完整。",
    "c_checks": "此外出现故障：{items}。",
    "c_check_item": "{name}（{duration}）",
    "c_open": "期末仍未解除的告警：{count} 个。",
    "c_no_history": "没有更早的历史记录可供对比。",
    "c_same": "与前{length}相比，完整率持平（{now}）。",
    "c_up": "与前{length}相比，完整率由 {before} 升至 {now}。",
    "c_down": "与前{length}相比，完整率由 {before} 降至 {now}。",
    "c_worse": "比上期变差：{items}。",
    "c_better": "比上期好转：{items}。",
    "c_change_item": "{terminal}（{before} → {now}）",
    "c_todo": "建议：{items}。",
    "c_nothing": "无需处理。",
    "field": "{label}：{value}",
    "list_sep": "；",
    "sentence_sep": "",
    "do_off": "如非有意停机，检查网关供电及采集软件是否运行",
    "do_dead": "检查 {terminal} 的供电、线缆和地址设置",
    "do_link": "检查与 {terminal} 的通信链路",
    "do_sensor": "检查 {point} 的传感器",
    "do_disk": "清理网关磁盘空间",
    "do_storage": "检查网关存储卡",
    "do_clock": "检查网关时钟及校时",
    "do_resources": "请技术支持检查网关负载和温度",
    "do_software": "请技术支持检查采集软件（重启、错误、配置）",
    "do_uplink": "检查上行链路（4G或光纤）及数据接收服务器",
    "do_schedule": "请技术支持调整轮询计划",
    "do_security": "请技术支持处理网关的安全问题",
    "do_support": "请技术支持检查：{check}",
    "key_figures": "主要指标",
    "col_figure": "指标",
    "col_value": "数值",
    "fig_status": "总体状态（本期最差的检查项）",
    "fig_completeness": "数据完整率（各终端平均）",
    "fig_availability": "终端在线率（各终端平均）",
    "fig_worst": "最差终端",
    "worst_value": "{terminal}：完整率 {completeness}",
    "fig_terminals": "终端数",
    "fig_alarms": "告警 产生 / 解除",
    "fig_anomalies": "数据异常",
    "fig_failing": "出现故障的检查项",
    "fig_starts": "采集软件启动次数",
    "fig_off": "采集软件未运行时长",
    "status_ok": "正常",
    "status_warn": "警告",
    "status_fail": "故障",
    "status_unknown": "未知",
    "status_none": "无检查记录",
    "na": "无数据",
    "terminals_head": "终端：在线率与数据完整率",
    "chart_completeness": "各终端数据完整率",
    "col_terminal": "终端",
    "col_availability": "在线率",
    "col_polls": "应答 / 应轮询次数",
    "col_completeness": "完整率",
    "col_readings": "收到 / 应收数据条数",
    "col_bad": "坏数据",
    "col_missing": "缺数时长",
    "col_previous": "上期完整率",
    "col_change": "变化",
    "no_terminals": "本期没有终端。",
    "verdict_better": "变好",
    "verdict_worse": "变差",
    "verdict_same": "持平",
    "verdict_none": "无数据",
    "compare_head": "与上期对比",
    "previous_period": "上期：{start} 至 {end}。",
    "col_this": "本期",
    "col_before": "上期",
    "cmp_completeness": "数据完整率（平均）",
    "cmp_availability": "在线率（平均）",
    "cmp_terminal": "{terminal} 完整率",
    "cmp_alarms": "产生的告警",
    "cmp_anomalies": "数据异常",
    "cmp_failing": "出现故障的检查项",
    "cmp_starts": "采集软件启动次数",
    "events_head": "告警、检查项与数据异常",
    "alarms_head": "告警（产生 {raised} 次，解除 {cleared} 次）",
    "col_time": "时间",
    "col_check": "检查项",
    "col_action": "动作",
    "col_status": "状态",
    "col_message": "说明",
    "action_raised": "产生",
    "action_cleared": "解除",
    "action_changed": "变化",
    "no_alarms": "无告警。",
    "more": "……另有 {count} 条。",
    "checks_head": "未通过的检查项",
    "col_worst": "最差状态",
    "col_fail_time": "故障时长",
    "col_warn_time": "警告时长",
    "checks_ok": "所有检查项均正常。",
    "no_checks": "本期没有检查记录。",
    "up_to": "至多{duration}",
    "anomalies_head": "数据异常（{count}）",
    "col_point": "测点",
    "col_kind": "类型",
    "col_count": "次数",
    "col_first": "首次",
    "col_last": "最近",
    "col_detail": "最近说明",
    "kind_range": "超出范围",
    "kind_stuck": "数值不变",
    "kind_spike": "突变",
    "kind_gap": "数据缺失",
    "kind_counter": "累计值倒退",
    "no_anomalies": "无数据异常。",
    "measured": "数值 {value}，阈值 {threshold}",
    "measured_value": "数值 {value}",
    "measured_threshold": "阈值 {threshold}",
    "detail_range": "数值 {value}",
    "detail_stuck": "持续为 {value}",
    "detail_spike": "突变至 {value}",
    "detail_gap": "缺 {value} 个样本",
    "detail_counter": "倒退至 {value}",
    "starts_head": "采集软件启动",
    "trends_head": "关键测点趋势（小时均值；阴影：最小至最大）",
    "trend_caption": "最小 {min} · 平均 {mean} · 最大 {max} · {count} 个样本",
    "no_values": "本期无数值",
    "no_data": "无数据",
    "point_name": "{terminal}：{label}",
    "seconds": "{n}秒",
    "minutes": "{n}分钟",
    "hours": "{h}小时",
    "hours_minutes": "{h}小时{m}分钟",
    "day": "1天",
    "days": "{d}天",
    "days_hours": "{days}{h}小时",
    "unit.%": "{n}%",
    "unit.s": "{n}秒",
    "unit.days": "{n}天",
    "unit.messages": "{n}条消息",
    "unit.samples": "{n}个样本",
    "unit.spikes": "{n}次突变",
    "unit.problems": "{n}个问题",
    "check.system.disk": "网关磁盘空间不足",
    "check.system.inodes": "网关文件系统索引节点不足",
    "check.system.memory": "网关内存不足",
    "check.system.load": "网关负载过高",
    "check.system.cpu_temp": "网关温度过高",
    "check.system.fs_writable": "网关存储不可写",
    "check.system.clock_sync": "网关时钟未同步",
    "check.system.clock": "终端时钟与网关偏差过大",
    "check.software.version": "软件版本",
    "check.software.python": "Python 版本",
    "check.software.os": "操作系统",
    "check.software.config": "配置文件有误",
    "check.software.restarts": "采集软件频繁重启",
    "check.software.log_errors": "采集软件记录了错误",
    "check.network.broker_dns": "服务器域名无法解析",
    "check.network.broker_tcp": "服务器无法连接",
    "check.network.uplink": "上行链路经常中断",
    "check.network.backlog": "待发送数据积压",
    "check.network.evictions": "旧数据未发送即被丢弃",
    "check.network.acks": "服务器未确认收到数据",
    "check.terminals.success": "{target} 未能应答全部轮询",
    "check.terminals.latency": "{target} 应答缓慢",
    "check.terminals.freshness": "{target} 的数据过时",
    "check.terminals.bus": "串口线路 {target} 负载过高",
    "check.terminals.overload": "网关未能按时轮询",
    "check.data.range": "{target} 超出范围",
    "check.data.stuck": "{target} 数值长时间不变",
    "check.data.spike": "{target} 数值突变",
    "check.data.gap": "{target} 数据有缺失",
    "check.data.counter": "{target} 累计值倒退",
    "check.security.files": "文件权限不安全",
    "check.security.cert_expiry": "证书即将过期",
    "check.security.root": "采集软件以 root 身份运行",
}

CATALOGUES: Final[Mapping[Language, Mapping[str, str]]] = {"en": EN, "zh": ZH}

# Checks whose value and threshold are shares (0.9 is 90 %), by name (the id before ':').
_RATIOS: Final = frozenset(
    ("terminals.success", "terminals.overload", "terminals.bus", "network.uplink")
)

# What a site owner can do about a failing check, by its name (the id before ':') or family.
_ACTIONS: Final[Mapping[str, str]] = {
    "system.disk": "do_disk",
    "system.inodes": "do_disk",
    "system.fs_writable": "do_storage",
    "system.clock_sync": "do_clock",
    "system.clock": "do_clock",
    "system.memory": "do_resources",
    "system.load": "do_resources",
    "system.cpu_temp": "do_resources",
    "terminals.success": "do_link",
    "terminals.latency": "do_link",
    "terminals.freshness": "do_link",
    "terminals.bus": "do_schedule",
    "terminals.overload": "do_schedule",
    "software": "do_software",
    "network": "do_uplink",
    "data": "do_sensor",
    "security": "do_security",
}


class Words:
    """One language's words and ways of writing numbers, dates and durations."""

    def __init__(self, language: Language, zone: tzinfo) -> None:
        self.language = language
        self.zone = zone
        self._text = CATALOGUES[language]

    def __call__(self, key: str, **fields: object) -> str:
        return self._text[key].format(**fields)

    def join(self, items: Iterable[str]) -> str:
        return self("list_sep").join(items)

    def sentences(self, items: Iterable[str]) -> str:
        return self("sentence_sep").join(items)

    # -- numbers ---------------------------------------------------------------------------

    def number(self, value: float, digits: int = 0) -> str:
        """Grouped by thousands in both languages: 2,880 · 5,184.5."""
        return f"{value:,.{digits}f}"

    def pct(self, ratio: float | None) -> str:
        return self("na") if ratio is None else f"{ratio * 100:.1f}%"

    def value(self, value: float, unit: str) -> str:
        """A measured value with its unit: 4 significant digits, whole from 10,000 on."""
        text = f"{value:,.0f}" if abs(value) >= 10_000 else f"{value:.4g}"
        if f"unit.{unit}" in self._text:
            return self(f"unit.{unit}", n=text)
        return f"{text} {unit}".rstrip()

    def scalar(self, value: Scalar, unit: str, ratio: bool = False) -> str | None:
        """A check's value or threshold as text; None where there is nothing to show (none, or
        a yes or no, which the check's plain name and status already say)."""
        if value is None or isinstance(value, bool):
            return None
        if isinstance(value, str):
            return value
        return self.pct(value) if ratio else self.value(value, unit)

    # -- the agent's messages --------------------------------------------------------------

    def agent_text(self, message: str, own: str) -> str:
        """The agent's own message in an English report (it writes English); the report's
        own words in another language, or where the agent gave none."""
        return message if self.language == "en" and message else own

    def measured(self, check_id: str, value: Scalar, unit: str, threshold: Scalar) -> str:
        """What a check measured against its limit: "value 96.5%, threshold 90%"."""
        ratio = check_id.partition(":")[0] in _RATIOS
        shown, limit = self.scalar(value, unit, ratio), self.scalar(threshold, unit, ratio)
        if shown is not None and limit is not None:
            return self("measured", value=shown, threshold=limit)
        if shown is not None:
            return self("measured_value", value=shown)
        if limit is not None:
            return self("measured_threshold", threshold=limit)
        return "—"

    def anomaly_detail(self, kind: str, value: Scalar, unit: str) -> str:
        """An anomaly's value in words ("jumped to 140 m"; a gap: the samples missing)."""
        key = f"detail_{kind}"
        if key not in self._text:
            return "—"
        return self(key, value=self.scalar(value, "" if kind == "gap" else unit) or "—")

    # -- times -----------------------------------------------------------------------------

    def local(self, at: datetime) -> datetime:
        return at.astimezone(self.zone)

    def date(self, at: datetime) -> str:
        """30 Nov 2026 · 2026年11月30日."""
        at = self.local(at)
        if self.language == "zh":
            return f"{at.year}年{at.month}月{at.day}日"
        return f"{at.day} {_MONTHS_EN[at.month - 1]} {at.year}"

    def when(self, at: datetime) -> str:
        """30 Nov 2026 14:05 · 2026年11月30日 14:05."""
        return f"{self.date(at)} {self.local(at):%H:%M}"

    def tick(self, at: datetime, span: float) -> str:
        """A chart's time label: the time of day within two days, else the date and time."""
        local = self.local(at)
        if span <= 600:
            return f"{local:%H:%M:%S}"
        if span <= 2 * 86400:
            return f"{local:%H:%M}"
        if self.language == "zh":
            return f"{local.month}月{local.day}日 {local:%H:%M}"
        return f"{local.day} {_MONTHS_EN[local.month - 1]} {local:%H:%M}"

    def duration(self, seconds: float) -> str:
        """A duration in words at the unit that fits: 45 s, 2 min, 4 h 48 min, 2 days 3 h."""
        whole = round(max(0.0, seconds))
        if whole < 60:
            return self("seconds", n=whole)
        minutes = round(whole / 60)
        if minutes < 60:
            return self("minutes", n=minutes)
        hours, minutes = divmod(minutes, 60)
        if hours < 24:
            return self("hours_minutes", h=hours, m=minutes) if minutes else self("hours", h=hours)
        days, hours = divmod(round(whole / 3600), 24)
        in_days = self("day") if days == 1 else self("days", d=days)
        return self("days_hours", days=in_days, h=hours) if hours else in_days

    # -- checks and points -----------------------------------------------------------------

    def check_name(self, check_id: str, target: str | None = None) -> str:
        """The plain name of a check id (`terminals.freshness:dam` -> "data from dam is stale");
        `target` is what follows ':' put in plain words (a point's label), if it is one."""
        name, _, rest = check_id.partition(":")
        text = self._text.get(f"check.{name}")
        if text is None:
            return check_id
        return text.format(target=target or rest)

    def check_action(self, check_id: str, target: str | None = None) -> str:
        """What to do about a failing check, as a site owner would say it."""
        name, _, rest = check_id.partition(":")
        key = _ACTIONS.get(name) or _ACTIONS.get(name.split(".", 1)[0])
        if key is None:
            return self("do_support", check=self.check_name(check_id, target))
        subject = target or rest
        return self(key, terminal=subject, point=subject)

    def point_name(self, terminal: str, point: str, label: str | None) -> str:
        """`dam-plc: reservoir level` where the point has a plain name, else `dam-plc.level`."""
        if not label:
            return f"{terminal}.{point}"
        return self("point_name", terminal=terminal, label=label)
