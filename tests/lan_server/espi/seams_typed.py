"""Checked by mypy in test_inputs.py, never run: each function hands a state-room object over as the
espi.inputs type the ESPI builders read it through, so a missing or mistyped member fails the check."""
from openseg.lan_server.espi.inputs import HistorySource, Moment, Sample
from openseg.lan_server.state.history_source import MemorySource, StoreSource
from openseg.lan_server.state.history_store import StoredReading
from openseg.lan_server.state.readings import Reading, Snapshot


def memory_source(source: MemorySource) -> HistorySource:
    return source


def store_source(source: StoreSource) -> HistorySource:
    return source


def memory_reading(reading: Reading) -> Sample:
    return reading


def stored_reading(reading: StoredReading) -> Sample:
    return reading


def snapshot(snap: Snapshot) -> Moment:
    return snap
