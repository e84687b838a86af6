"""Helpers shared by the HAN unit tests: a recording channel sender and a service on a fake radio."""
from __future__ import annotations

from openseg.han_reader.egress_guard import EgressGuard
from openseg.han_reader.radio import Radio
from openseg.han_reader.service import HanService
from openseg.shared_schema import messages, sd_notify

from tests.support.fake_radio import FakeClock, FakeRadio

HAN = {"serial_port": "/dev/fake-xbee", "baudrate": 9600, "poll_interval_s": 7.0, "allow_fast_poll": False,
       "response_timeout_s": 3.0, "require_aps_encryption": True, "status_every_s": 30.0}


class RecordingSender:
    """ChannelSender's interface; every message goes through the real schema (encode, then decode)."""

    def __init__(self, clock):
        self.clock = clock
        self.seq = 0
        self.dropped = 0
        self.messages: list[dict] = []

    def send(self, kind: str, fields: dict) -> bool:
        msg = {"v": messages.VERSION, "seq": self.seq, "kind": kind, "sent": self.clock.wall(), **fields}
        self.seq += 1
        self.messages.append(messages.decode(messages.encode(msg)))
        return True

    def per_slot(self) -> list[dict]:
        """Every message, a gap run listed as one gap per slot (as the LAN side stores it)."""
        out = []
        for m in self.messages:
            if m["kind"] == "gap":
                out += [{**m, "slot": slot, "due": due} for slot, due in messages.gap_slots(m)]
            else:
                out.append(m)
        return out

    def of(self, kind: str) -> list[dict]:
        return [m for m in self.per_slot() if m["kind"] == kind]

    def slots(self) -> list[dict]:
        """Readings and gaps (one per slot), in the order sent."""
        return [m for m in self.per_slot() if m["kind"] in ("reading", "gap")]

    def states(self) -> list[str]:
        """The sequence of distinct states the status messages went through."""
        out: list[str] = []
        for m in self.of("status"):
            if not out or out[-1] != m["state"]:
                out.append(m["state"])
        return out


class Rig:
    """A HanService wired to a FakeRadio and a RecordingSender, all on one FakeClock."""

    def __init__(self, radio: FakeRadio | None = None, clock: FakeClock | None = None, watchdog_s=None,
                 **han):
        self.clock = clock or (radio.clock if radio else FakeClock())
        self.radio_hw = radio or FakeRadio(self.clock)
        self.t0 = self.clock.now
        self.logged: list[str] = []
        self.han = {**HAN, **han}
        self.guard = EgressGuard(self.logged.append, self.clock, self.han["poll_interval_s"])
        self.radio_hw.hand_over = self.guard.attach
        self.radio = Radio(self.radio_hw, self.guard, self.clock, self.han["require_aps_encryption"])
        self.sender = RecordingSender(self.clock)
        self.notified: list[tuple[float, str]] = []     # (fake time, field) for every sd_notify field
        env = {"WATCHDOG_USEC": str(int(watchdog_s * 1e6))} if watchdog_s else {}
        watchdog = sd_notify.Watchdog(["han-loop"], env=env, clock=self.clock.monotonic,
                                      send=self._notify)
        self.service = HanService(self.han, self.radio_hw, self.radio, self.guard, self.sender, self.clock,
                                  notify=self._notify, watchdog=watchdog)

    def _notify(self, *fields: str) -> bool:
        self.notified += [(self.clock.now - self.t0, f) for f in fields]
        return True

    def run_for(self, seconds: float) -> int:
        """Run the real loop until `seconds` of fake time have passed, then stop it as SIGTERM would."""
        self.radio_hw.at(self.t0 + seconds, self.radio_hw.stop)
        return self.service.run()

    def at(self, seconds: float, action) -> None:
        self.radio_hw.at(self.t0 + seconds, action)

    def not_reads(self) -> list[dict]:
        return [f for f in self.radio_hw.frame_log if f["class"] == "not-a-read"]
