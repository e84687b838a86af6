"""The benchmarks' channel observer: binds the socket the HAN process is told to send to, records every
message as one JSON line, and forwards the datagram unchanged (non-blocking, like the HAN's own sender)
to the LAN process's socket.

    python bench/relay.py --listen RELAY.sock --forward LAN.sock --out messages.jsonl

Each line: the decoded message (openseg.shared_schema.messages.decode) plus "t_recv" (wall clock when the relay
received it) and "forwarded" (false when the LAN side's queue was full or its socket absent). Exits 0 on
SIGTERM/SIGINT.
"""
from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from openseg.shared_schema import messages  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", required=True)
    ap.add_argument("--forward", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    stopping = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.append(1))
    try:
        os.unlink(args.listen)
    except FileNotFoundError:
        pass
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(args.listen)
    tx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    tx.setblocking(False)
    poller = select.poll()
    poller.register(rx, select.POLLIN)
    with open(args.out, "a", buffering=1) as out:
        while not stopping:
            try:
                if not poller.poll(200):
                    continue
                data = rx.recv(messages.MAX_DATAGRAM + 1)
            except InterruptedError:
                continue
            t_recv = time.time()
            try:
                tx.sendto(data, args.forward)
                forwarded = True
            except OSError:
                forwarded = False
            try:
                msg = messages.decode(data)
            except messages.MessageError as exc:
                msg = {"kind": "invalid", "error": str(exc)}
            msg.update(t_recv=t_recv, forwarded=forwarded)
            out.write(json.dumps(msg, separators=(",", ":")) + "\n")
    rx.close()
    tx.close()
    os.unlink(args.listen)
    return 0


if __name__ == "__main__":
    sys.exit(main())
