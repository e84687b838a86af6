"""Probes the system test runs inside the booted gateway (tests/system/test_system_boot.py), each printing one
JSON line. Standard library only: it runs under the installed venv's python, as root, as a service's
uid, or inside a copy of a service's sandbox. Every address is loopback.

    probe.py sockets PID               the address family of every socket PID holds
    probe.py connect HOST PORT         try socket(AF_INET/AF_INET6/AF_NETLINK) and a TCP connect
    probe.py read PATH...              try to read each file / list each folder
    probe.py open-rw PATH              try to open a device for reading and writing
    probe.py get PATH USER PASSWORD CAFILE    one HTTPS GET of https://localhost:8443/PATH
    probe.py flood SECONDS CLIENTS USER PASSWORD CAFILE    HTTPS GETs back to back; counts answers
"""
from __future__ import annotations

import base64
import errno
import hashlib
import http.client
import json
import os
import socket
import ssl
import sys
import threading
import time

PORT = 8443
FAMILY_TABLES = {                    # /proc/PID/net table -> the family of the sockets it lists
    "unix": "AF_UNIX", "tcp": "AF_INET", "udp": "AF_INET", "raw": "AF_INET", "tcp6": "AF_INET6",
    "udp6": "AF_INET6", "raw6": "AF_INET6", "netlink": "AF_NETLINK", "packet": "AF_PACKET",
}


def outcome(exc: OSError | None) -> str:
    return "ok" if exc is None else errno.errorcode.get(exc.errno, str(exc))


def sockets(pid: str) -> dict:
    """Every socket fd of PID, by the /proc/.../net table its inode is listed in; "unlisted" would be
    a family with no table here."""
    inodes = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
        if target.startswith("socket:["):
            inodes[target[8:-1]] = fd
    families = {inode: "unlisted" for inode in inodes}
    # Its own network namespace's tables, and PID 1's: sockets systemd made for it before moving it
    # into a private namespace (journald's stdout stream) are listed where they were made.
    for table, family in FAMILY_TABLES.items():
        try:
            lines = (open(f"/proc/{pid}/net/{table}").read().splitlines()[1:] +
                     open(f"/proc/1/net/{table}").read().splitlines()[1:])
        except FileNotFoundError:
            continue
        column = {"unix": 6, "netlink": 8, "packet": 8}.get(table, 9)
        for line in lines:
            fields = line.split()
            if len(fields) > column and fields[column] in families:
                families[fields[column]] = family
    return {"pid": int(pid), "sockets": sorted(families.values())}


def connect(host: str, port: str) -> dict:
    out = {}
    for name in ("AF_INET", "AF_INET6", "AF_NETLINK"):
        try:
            socket.socket(getattr(socket, name), socket.SOCK_DGRAM if name == "AF_NETLINK" else socket.SOCK_STREAM).close()
            out[name] = "ok"
        except OSError as exc:
            out[name] = outcome(exc)
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            out["connect"] = "ok"
    except OSError as exc:
        out["connect"] = outcome(exc)
    return out


def read(*paths: str) -> dict:
    out = {}
    for path in paths:
        try:
            if os.path.isdir(path):
                os.listdir(path)
            else:
                with open(path, "rb") as f:
                    f.read(1)
            out[path] = "ok"
        except OSError as exc:
            out[path] = outcome(exc)
    return out


def open_rw(path: str) -> dict:
    try:
        os.close(os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK))
        return {path: "ok"}
    except OSError as exc:
        return {path: outcome(exc)}


def _context(cafile: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cafile)      # verified: localhost is in the certificate's SANs


def _auth(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def get(path: str, user: str, password: str, cafile: str) -> dict:
    conn = http.client.HTTPSConnection("localhost", PORT, context=_context(cafile), timeout=10)
    try:
        conn.request("GET", path, headers=_auth(user, password))
        answer = conn.getresponse()
        body = answer.read()
        peer = conn.sock.getpeercert(binary_form=True)
    except ssl.SSLError as exc:          # its errno is OpenSSL's error class, not an errno: give the reason
        return {"error": f"{type(exc).__name__}: {exc.reason}"}
    except OSError as exc:
        return {"error": outcome(exc) if exc.errno else f"{type(exc).__name__}: {exc}"}
    finally:
        conn.close()
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    return {"status": answer.status, "json": data, "bytes": len(body),
            "cert_sha256": hashlib.sha256(peer).hexdigest()}


def flood(seconds: str, clients: str, user: str, password: str, cafile: str) -> dict:
    """`clients` keep-alive clients asking /api/v1/current back to back, and as many more opening a
    new TLS connection per request (the expensive kind), for `seconds`."""
    context, headers = _context(cafile), _auth(user, password)
    end = time.monotonic() + float(seconds)
    counts = {"keep-alive": 0, "new-connection": 0, "failed": 0}
    lock = threading.Lock()

    def client(kind: str):
        conn = None
        while time.monotonic() < end:
            try:
                if conn is None:
                    conn = http.client.HTTPSConnection("localhost", PORT, context=context, timeout=10)
                conn.request("GET", "/api/v1/current", headers=headers)
                answer = conn.getresponse()
                answer.read()
                ok = answer.status == 200
                if kind == "new-connection":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                ok = False
                conn = None
            with lock:
                counts[kind if ok else "failed"] += 1
    threads = [threading.Thread(target=client, args=(kind,))
               for kind in ("keep-alive", "new-connection") for _ in range(int(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return counts


def main(argv: list[str]) -> int:
    commands = {"sockets": sockets, "connect": connect, "read": read, "open-rw": open_rw, "get": get,
                "flood": flood}
    print(json.dumps(commands[argv[0]](*argv[1:])), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
