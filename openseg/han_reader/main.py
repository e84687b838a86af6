"""`openseg-han --config F [--check]`: wiring only. The loop is in service.py, the diagnosis in check.py.

This is where the serial link is told to hand the write-capable port to the egress guard (and to nothing
else); every other module gets the read-only link and the Radio, whose requests go through the guard.
The process opens exactly two things: the serial port and an unbound datagram socket for the channel.

Exit codes: 0 stopped by SIGTERM/SIGINT, or `--check` found the gateway ready; 1 `--check` found it not
ready; 2 configuration error (the message names the key); 3 the radio is not in API mode 2 with explicit
receive (AP=2, AO bit 0), which a person must fix.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from openseg.shared_schema import config

from .channel_sender import ChannelSender
from .check import run_check
from .clock import SystemClock
from .egress_guard import EgressGuard
from .link import SerialLink
from .radio import Radio
from .service import EXIT_CONFIG, HanService

log = logging.getLogger("openseg.han")


class _OneLineFormatter(logging.Formatter):
    """One event per line, even when an exception text carries newlines."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", " | ")


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S%z"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])    # no-op if a host already set logging up


def _stop_on_signals() -> int:
    """SIGTERM/SIGINT write to a pipe the link watches, so any wait ends at once; returns its read end."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: None)    # the wakeup byte does the work
    return read_fd


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="openseg-han", description="Read a ZigBee Smart Energy meter through an XBee SE radio "
        "(read-only) and send the readings to the LAN process.")
    parser.add_argument("--config", required=True, help="the gateway's TOML configuration file")
    parser.add_argument("--check", action="store_true",
                        help="diagnose the radio and the meter (read-only), print the findings and exit "
                             "0 only if polling could start")
    args = parser.parse_args(argv)
    _setup_logging()
    try:
        cfg = config.load(args.config)
    except config.ConfigError as exc:
        print(f"openseg-han: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    han = cfg.han
    clock = SystemClock()
    guard = EgressGuard(log.error, clock, han["poll_interval_s"])
    # The one hand-over of the port's write: the link gives each port it opens to the guard only.
    link = SerialLink(han["serial_port"], han["baudrate"], guard.attach,
                      None if args.check else _stop_on_signals())
    radio = Radio(link, guard, clock, han["require_aps_encryption"])
    if args.check:
        try:
            return run_check(link, radio, han, clock, out=lambda line: print(line, flush=True))
        except KeyboardInterrupt:
            link.close()
            return 130
    sender = ChannelSender(cfg.channel["socket_path"], clock)
    log.info("openseg-han starting: port %s, %g s poll interval, channel %s", han["serial_port"],
             han["poll_interval_s"], cfg.channel["socket_path"])
    try:
        return HanService(han, link, radio, guard, sender, clock).run()
    finally:
        link.close()
        sender.close()


if __name__ == "__main__":
    sys.exit(main())
