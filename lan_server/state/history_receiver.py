"""The channel receiver, committing the history store's batch whenever the socket is drained.

history_store.HistoryWriter queues rows and commits them at least every half second while datagrams
keep coming; this is the other half of that rule: as soon as the socket has nothing more to read, what
is queued is committed, so a reading never waits for the next one (seven seconds away at the production
poll) to become durable. Both happen in the receiver thread, which stays the store's only writer.
"""
from __future__ import annotations

from typing import Callable

from .channel_receiver import ChannelReceiver
from .history_keeper import HistoryKeeper
from .readings import Readings


class HistoryChannelReceiver(ChannelReceiver):
    def __init__(self, socket_path: str, allowed_uid: int, readings: Readings,
                 log: Callable[[str], None], history: HistoryKeeper):
        super().__init__(socket_path, allowed_uid, readings, log)
        self.history = history

    def _drain(self) -> None:
        # ChannelReceiver._drain returns exactly when recvmsg would block (or failed): the burst of
        # datagrams that arrived together has been applied, and is now one transaction.
        try:
            super()._drain()
        finally:
            self.history.flush()
