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

from openseg.shared_schema.messages import HAN_STATES

from ..state.history_store import StoreStats
from ..state.readings import Reading, Snapshot, data_status
from ..espi.scaling import decimal_text, resolution_exponent, scaled_int

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
JOULES_PER_WH = 3600
DATA_STATUSES = ("ok", "stale", "no-data")
COUNTER, GAUGE = "counter", "gauge"


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

    def plain(*rows: tuple) -> None:
        """Families of one unlabelled sample each: (name, kind, help, value)."""
        for name, kind, help_text, value in rows:
            family(name, kind, help_text).add(value)

    summ, dem = snap.latest_summation, snap.latest_demand
    family("energy_imported_joules_total", COUNTER,
           "Energy delivered to the home, the meter's register (CurrentSummationDelivered), in joules "
           "(1 Wh = 3600 J).").add(_scaled(summ, "summation", JOULES_PER_WH))
    family("energy_exported_joules_total", COUNTER,
           "Energy the home fed to the grid, the meter's register (CurrentSummationReceived), in joules "
           "(1 Wh = 3600 J); absent while the meter does not report it.").add(
               _scaled(snap.latest_received, "received", JOULES_PER_WH))
    family("power_watts", GAUGE, "Instantaneous demand the meter reports, in watts (negative: "
           "exporting).").add(_scaled(dem, "demand"))
    family("energy_reading_timestamp_seconds", GAUGE, "Time tag of the latest energy reading, "
           "seconds since the epoch.").add(summ.time if summ else None)
    family("power_reading_timestamp_seconds", GAUGE, "Time tag of the latest power reading, seconds "
           "since the epoch.").add(dem.time if dem else None)
    status = data_status(snap)
    data = family("data_status", GAUGE, "1 for the freshness of the latest reading (ok, stale, "
                  "no-data), 0 for the others.")
    for name in DATA_STATUSES:
        data.add(name == status, {"status": name})

    rep, q = snap.report, snap.queries
    state = family("han_state", GAUGE, "1 for the HAN process's current state, 0 for the others "
                   "(none before its first report).")
    if rep is not None:
        for name in HAN_STATES:
            state.add(name == rep.state, {"state": name})
    silent = snap.last_message_at is None or snap.now - snap.last_message_at > snap.silent_after_s
    family("han_silent", GAUGE, "1 when nothing has come from the HAN process for "
           f"{snap.silent_after_s:g} s (not running, or cannot send).").add(silent)
    if q is not None:
        family("queries_total", COUNTER, "Queries the HAN process sent to the meter.").add(q.total)
        lost = family("queries_lost_total", COUNTER, "Queries the meter did not answer usably, by cause.")
        for cause, n in q.lost_by_cause:
            lost.add(n, {"cause": cause})
    if rep is not None:
        plain(("han_frames_bad_total", COUNTER, "Frames from the radio that failed their checksum or "
               "framing.", rep.frames_bad),
              ("han_guard_refused_total", COUNTER, "Frames the HAN's egress guard refused to send (anything "
               "but a read).", rep.guard_refused),
              ("han_channel_dropped_total", COUNTER, "Messages the HAN process dropped because the channel "
               "was full or absent.", rep.channel_dropped),
              ("han_start_time_seconds", GAUGE, "When the HAN process started, seconds since the epoch.",
               rep.started),
              ("poll_interval_seconds", GAUGE, "Seconds between two meter queries.", rep.poll_interval_s),
              ("han_report_timestamp_seconds", GAUGE, "When the HAN's latest status report arrived, seconds "
               "since the epoch.", rep.received))

    # What the data went through (README "Time", "Energy that is physically possible"): events a
    # dashboard alerts on, so they are counters, present from the start (0 is a true count here).
    seen = snap.observed
    if rep is not None:
        plain(("clock_steps_total", COUNTER, "Wall-clock steps the HAN process detected (its clock was set "
               "while it ran).", rep.clock_steps),
              ("clock_plausible", GAUGE, "1 while the HAN's wall clock is plausible (set, not before "
               "2025); 0 while it holds readings until it is.", rep.clock_plausible))
    plain(("clock_moves_total", COUNTER, "Clock messages from the HAN applied: tags of earlier readings "
           "and gaps moved to the corrected clock.", seen.clock_moves),
          ("meter_changes_total", COUNTER, "Times the HAN reported another meter (a new IEEE address).",
           seen.meter_changes),
          ("register_breaks_total", COUNTER, "Register moves beyond what the service can draw (a meter "
           "change or a bad value); their quarter hours are left out.", seen.register_breaks),
          ("channel_lost_slots_total", COUNTER, "Poll slots whose messages the channel lost, recorded as "
           "channel-lost gaps.", seen.channel_lost))
    plain(("channel_received_total", COUNTER, "Valid messages the LAN process received from the HAN process.",
           channel.get("received")))
    rejected = family("channel_rejected_total", COUNTER, "Datagrams the LAN process dropped, by reason.")
    for reason, n in sorted(channel.get("rejected_by_reason", {}).items()):
        rejected.add(n, {"reason": reason})
    plain(("channel_sequence_gaps_total", COUNTER, "Jumps in the HAN's message numbering seen by the LAN "
           "process.", channel.get("seq_gaps")),
          ("channel_messages_missing_total", COUNTER, "Messages missing in those jumps.",
           channel.get("seq_missing")),
          ("han_restarts_total", COUNTER, "HAN process restarts seen by the LAN process.",
           channel.get("han_restarts")),
          ("channel_internal_errors_total", COUNTER, "Messages whose handling in the LAN process failed "
           "(counted; the receiver carries on).", channel.get("internal_errors")),
          ("channel_queue_length", GAUGE, "Datagrams that can wait in the channel socket's queue, as "
           "measured at start (net.unix.max_dgram_qlen + 1).", channel.get("queue_len")),
          ("lan_start_time_seconds", GAUGE, "When the LAN process started, seconds since the epoch.",
           lan_started),
          ("history_enabled", GAUGE, "1 when readings are kept in the persistent history.",
           history is not None))
    if history is not None:
        st = history.stats
        plain(("history_rows", GAUGE, "Readings and gaps the history holds.", st.rows),
              ("history_file_bytes", GAUGE, "Size of the history database file.", st.file_bytes),
              ("history_bound_bytes", GAUGE, "The most the history file may grow to.", st.bound_bytes),
              ("history_retention_seconds", GAUGE, "How long the history keeps entries.",
               st.retention_days * 86400),
              ("history_oldest_timestamp_seconds", GAUGE, "Time of the oldest entry kept, seconds since the "
               "epoch.", history.oldest_s),
              ("history_newest_timestamp_seconds", GAUGE, "Time of the newest entry kept, seconds since the "
               "epoch.", history.newest_s),
              ("history_not_stored_total", COUNTER, "Entries not stored because their time tag was beyond "
               "the retention or in the future by this machine's clock.", st.skipped),
              ("history_write_errors_total", COUNTER, "Failed writes to the history database.",
               st.write_errors),
              ("history_lost_total", COUNTER, "Entries lost because a write failed.", st.dropped))
    return "\n".join(line for fam in f for line in fam.lines()) + "\n"
