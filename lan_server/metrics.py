"""`GET /metrics`: what the gateway knows, in Prometheus's text exposition format (version 0.0.4), as a
pure function of a readings snapshot, the channel counters and the history's health.

Conventions of that ecosystem (prometheus.io/docs/practices/naming): base units, so energy is in
joules (1 Wh = 3600 J; a dashboard shows kWh as `openseg_energy_imported_joules_total / 3.6e6`),
power in watts, times in seconds since the epoch; a cumulative count is a counter named `_total`; an
enumerated state is one series per possible value, 1 for the current one and 0 for the others, so a
query never has to match a string value. A quantity with no value yet is left out (never 0):
Prometheus then shows no sample rather than a wrong one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from shared_schema.messages import HAN_STATES

from .history_store import StoreStats
from .readings import Reading, Snapshot, data_status
from .scaling import decimal_text, resolution_exponent, scaled_int

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
JOULES_PER_WH = 3600
DATA_STATUSES = ("ok", "stale", "no-data")


@dataclass(frozen=True)
class HistoryHealth:
    """The persistent history store's counters and bounds (history_store.StoreStats), and the times
    of its oldest and newest entries."""
    stats: StoreStats
    oldest_s: float | None
    newest_s: float | None


class _Family:
    def __init__(self, name: str, kind: str, help_text: str):
        self.name, self.kind, self.help = name, kind, help_text
        self.samples: list[tuple[str, str]] = []

    def add(self, value, labels: Mapping[str, str] | None = None) -> "_Family":
        if value is None:
            return self
        text = ",".join(f'{k}="{_escape(v)}"' for k, v in (labels or {}).items())
        self.samples.append(("{" + text + "}" if text else "", _number(value)))
        return self

    def lines(self) -> Iterable[str]:
        if not self.samples:
            return
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        for labels, value in self.samples:
            yield f"{self.name}{labels} {value}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, str):      # already exact decimal text
        return value
    if isinstance(value, float):
        return repr(round(value, 3))
    return str(value)


def _scaled(reading: Reading | None, quantity: str, factor: int = 1) -> str | None:
    """The meter's value in decimal text, exactly (a double is what Prometheus keeps of it)."""
    raw = None if reading is None else getattr(reading, quantity)
    if raw is None:
        return None
    p = resolution_exponent(reading.scaling)
    return decimal_text(scaled_int(raw, reading.scaling, p) * factor, p)


def render(snap: Snapshot, channel: Mapping, history: HistoryHealth | None, lan_started: float) -> str:
    f: list[_Family] = []

    def family(name: str, kind: str, help_text: str) -> _Family:
        f.append(_Family("openseg_" + name, kind, help_text))
        return f[-1]

    summ, dem = snap.latest_summation, snap.latest_demand
    family("energy_imported_joules_total", "counter",
           "Energy delivered to the home, the meter's register (CurrentSummationDelivered), in joules "
           "(1 Wh = 3600 J).").add(_scaled(summ, "summation", JOULES_PER_WH))
    family("power_watts", "gauge", "Instantaneous demand the meter reports, in watts (negative: "
           "exporting).").add(_scaled(dem, "demand"))
    family("energy_reading_timestamp_seconds", "gauge", "Time tag of the latest energy reading, "
           "seconds since the epoch.").add(summ.time if summ else None)
    family("power_reading_timestamp_seconds", "gauge", "Time tag of the latest power reading, seconds "
           "since the epoch.").add(dem.time if dem else None)
    status = data_status(snap)
    data = family("data_status", "gauge", "1 for the freshness of the latest reading (ok, stale, "
                  "no-data), 0 for the others.")
    for name in DATA_STATUSES:
        data.add(name == status, {"status": name})

    rep, q = snap.report, snap.queries
    state = family("han_state", "gauge", "1 for the HAN process's current state, 0 for the others "
                   "(none before its first report).")
    if rep is not None:
        for name in HAN_STATES:
            state.add(name == rep.state, {"state": name})
    silent = snap.last_message_at is None or snap.now - snap.last_message_at > snap.silent_after_s
    family("han_silent", "gauge", "1 when nothing has come from the HAN process for "
           f"{snap.silent_after_s:g} s (not running, or cannot send).").add(silent)
    if q is not None:
        family("queries_total", "counter", "Queries the HAN process sent to the meter.").add(q.total)
        lost = family("queries_lost_total", "counter", "Queries the meter did not answer usably, by cause.")
        for cause, n in q.lost_by_cause:
            lost.add(n, {"cause": cause})
    if rep is not None:
        family("han_frames_bad_total", "counter", "Frames from the radio that failed their checksum or "
               "framing.").add(rep.frames_bad)
        family("han_guard_refused_total", "counter", "Frames the HAN's egress guard refused to send "
               "(anything but a read).").add(rep.guard_refused)
        family("han_channel_dropped_total", "counter", "Messages the HAN process dropped because the "
               "channel was full or absent.").add(rep.channel_dropped)
        family("han_start_time_seconds", "gauge", "When the HAN process started, seconds since the "
               "epoch.").add(rep.started)
        family("poll_interval_seconds", "gauge", "Seconds between two meter queries.").add(rep.poll_interval_s)
        family("han_report_timestamp_seconds", "gauge", "When the HAN's latest status report arrived, "
               "seconds since the epoch.").add(rep.received)

    family("channel_received_total", "counter", "Valid messages the LAN process received from the HAN "
           "process.").add(channel.get("received"))
    rejected = family("channel_rejected_total", "counter", "Datagrams the LAN process dropped, by reason.")
    for reason, n in sorted(channel.get("rejected_by_reason", {}).items()):
        rejected.add(n, {"reason": reason})
    family("channel_sequence_gaps_total", "counter", "Jumps in the HAN's message numbering "
           "seen by the LAN process.").add(channel.get("seq_gaps"))
    family("channel_messages_missing_total", "counter", "Messages missing in those jumps."
           ).add(channel.get("seq_missing"))
    family("han_restarts_total", "counter", "HAN process restarts seen by the LAN process."
           ).add(channel.get("han_restarts"))
    family("lan_start_time_seconds", "gauge", "When the LAN process started, seconds since the "
           "epoch.").add(lan_started)

    family("history_enabled", "gauge", "1 when readings are kept in the persistent history."
           ).add(history is not None)
    if history is not None:
        st = history.stats
        family("history_rows", "gauge", "Readings and gaps the history holds.").add(st.rows)
        family("history_file_bytes", "gauge", "Size of the history database file.").add(st.file_bytes)
        family("history_bound_bytes", "gauge", "The most the history file may grow to."
               ).add(st.bound_bytes)
        family("history_retention_seconds", "gauge", "How long the history keeps entries."
               ).add(st.retention_days * 86400)
        family("history_oldest_timestamp_seconds", "gauge", "Time of the oldest entry kept, seconds "
               "since the epoch.").add(history.oldest_s)
        family("history_newest_timestamp_seconds", "gauge", "Time of the newest entry kept, seconds "
               "since the epoch.").add(history.newest_s)
        family("history_not_stored_total", "counter", "Entries not stored because their time tag was "
               "beyond the retention or in the future by this machine's clock.").add(st.skipped)
        family("history_write_errors_total", "counter", "Failed writes to the history database."
               ).add(st.write_errors)
        family("history_lost_total", "counter", "Entries lost because a write failed."
               ).add(st.dropped)
    return "\n".join(line for fam in f for line in fam.lines()) + "\n"
