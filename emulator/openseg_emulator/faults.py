"""Seeded faults on the meter's answers to poll reads: dropped, or corrupted on the wire.

Only answers to reads of CurrentSummationDelivered or InstantaneousDemand are touched, so the number
of faults in the frame log is exactly the number of poll queries a correct host must count as lost.
A corrupted answer is still a well-formed escaped byte stream (a host must not lose sync over it); it
only fails its checksum. Sometimes a corrupt answer is preceded by line noise, which may include a
start delimiter and a length promising more bytes than follow, as a glitch on a real UART can.
"""
from __future__ import annotations

import random

from . import api_frames as af

DROP, CORRUPT = "drop", "corrupt"
_NOISE = bytes(b for b in range(256) if b not in af.ESCAPED_BYTES)
_LONG_LENGTHS = bytes(b for b in _NOISE if b >= 0x20)


class FaultInjector:
    def __init__(self, rng: random.Random, drop_rate: float = 0.0, corrupt_rate: float = 0.0):
        for name, p in (("drop_rate", drop_rate), ("corrupt_rate", corrupt_rate)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], not {p}")
        self.rng = rng
        self.drop_rate = drop_rate
        self.corrupt_rate = corrupt_rate

    def decide(self) -> str | None:
        """The fate of one poll answer: dropped with drop_rate; else corrupted with corrupt_rate."""
        if self.drop_rate and self.rng.random() < self.drop_rate:
            return DROP
        if self.corrupt_rate and self.rng.random() < self.corrupt_rate:
            return CORRUPT
        return None

    def corrupt(self, data: bytes) -> tuple[bytes, bool]:
        """The escaped bytes of `data` with one byte (data or checksum) damaged, and whether line
        noise was put in front of it."""
        rng = self.rng
        body = bytearray(data)
        check = af.checksum(data)
        # XOR of one byte with a non-zero mask changes the byte sum mod 256, so the checksum must fail.
        mask = rng.randrange(1, 256)
        index = rng.randrange(len(body) + 1)
        if index == len(body):
            check ^= mask
        else:
            body[index] ^= mask
        frame = af.encode_with_checksum(bytes(body), check)
        if rng.random() < 0.5:
            return frame, False
        return self.noise() + frame, True

    def noise(self) -> bytes:
        rng = self.rng
        junk = bytes(rng.choice(_NOISE) for _ in range(rng.randint(1, 12)))
        if rng.random() < 0.5:
            return junk
        # A truncated frame: its length (>= 32) is more than the junk that follows, so the next
        # real start delimiter interrupts it; no complete valid frame can hide in here.
        return bytes((af.START, 0x00, rng.choice(_LONG_LENGTHS))) + junk
