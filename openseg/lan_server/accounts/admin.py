"""`openseg-admin`: create an installation and manage LAN users.

    openseg-admin init --dir DIR [--lan-port N] [--serial PATH] [--bind ADDR] [--user NAME]
                       [--san NAME_OR_IP]... [--socket-path PATH] [--han-uid UID] [--state-dir DIR]
                       [--force]
    openseg-admin user add NAME [--password-stdin] [--subscription ID] --config F
    openseg-admin user passwd NAME [--password-stdin] --config F
    openseg-admin user remove NAME --config F
    openseg-admin user list --config F
    openseg-admin cert renew --config F [--san NAME_OR_IP]... [--if-due] [--restart-unit UNIT]

Exit codes: 0 done; 1 refused (bad name, user exists, DIR not empty...); 2 a config or users file that
cannot be used (unreadable, not UTF-8, not TOML, a bad key: one line names the file), or bad usage.
Secrets are printed once and stored only as hashes; there is no default password anywhere.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import ipaddress
import os
import socket
import subprocess
import sys
import tomllib
from typing import Iterator

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from openseg.shared_schema import config as config_schema
from . import certs, passwords
from .users_file import (User, UsersFileError, check_name, check_subscription, generate_subscription_id,
                         generate_user_name, load, locked, render, write_atomic)

CONFIG_NAME = "gateway.toml"
# The installation's CA (openseg.lan_server.accounts.certs): its certificate beside the config, for devices to import;
# its key in a folder of its own that only the admin (root on a gateway) may enter, never openseg-lan.
CA_CERT = "ca.pem"
CA_KEY = os.path.join("ca", "key.pem")
DEFAULT_SERIAL = "/dev/ttyUSB0"
SOCKET_REL = "run/readings.sock"


class AdminError(Exception):
    """Refused: the message says why; exit code 1."""


class UsersFileUnusable(Exception):
    """The users file exists but cannot be used; exit code 2, like a bad config file."""


def toml_string(value: str) -> str:
    """A TOML basic string (quotes, backslashes and control characters escaped)."""
    out = ['"']
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch in "\b\t\n\f\r":
            out.append({"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def gateway_toml(*, serial: str, bind: str, port: int, socket_path: str = SOCKET_REL,
                 han_uid: int | None = None, state_dir: str | None = None) -> str:
    """The defaults suit a folder of one's own (`make run`); deploy/install-gateway passes the
    production socket path, the HAN user's uid and the state directory the units expect."""
    today = dt.date.today().isoformat()
    uid_line = "" if han_uid is None else f"han_uid = {han_uid}\n"
    state_line = "" if state_dir is None else f"state_dir = {toml_string(state_dir)}\n"
    return f"""# OpenSEG gateway configuration, written by `openseg-admin init` on {today}.
# Relative paths are relative to this file's folder. Every key is described in the README.

[han]
serial_port = {toml_string(serial)}
# baudrate = 9600
# poll_interval_s = 7.0

[channel]
socket_path = {toml_string(socket_path)}
{uid_line}
[lan]
bind = {toml_string(bind)}
port = {port}
certificate = "tls/cert.pem"
private_key = "tls/key.pem"
users_file = "users.toml"
{state_line}# time_zone = "UTC"
"""


def _url(bind: str, port: int) -> str:
    ip = ipaddress.ip_address(bind)
    if ip.is_unspecified:
        host = socket.gethostname() or "localhost"
    else:
        host = f"[{ip}]" if ip.version == 6 else str(ip)
    return f"https://{host}:{port}/"


def _chosen_password(stdin) -> str:
    text = stdin.read(passwords.MAX_PASSWORD_LEN + 3)
    if text.endswith("\n"):
        text = text[:-1]
        if text.endswith("\r"):
            text = text[:-1]
    if "\n" in text or "\r" in text:
        raise AdminError("--password-stdin: expected one line")
    if problem := passwords.check_chosen_password(text):
        raise AdminError(f"--password-stdin: {problem}")
    return text


def _check_sans(names: list[str]) -> None:
    for name in names:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            if not all(part and len(part) <= 63 and part.replace("-", "").isalnum() and part.isascii()
                       for part in name.split(".")):
                raise AdminError(f"--san: {name!r} is neither an IP address nor a host name") from None


# -- init ------------------------------------------------------------------------------------------
def cmd_init(args) -> None:
    if not 1 <= args.lan_port <= 65535:
        raise AdminError(f"--lan-port: must be 1-65535 (got {args.lan_port})")
    try:
        ipaddress.ip_address(args.bind)
    except ValueError:
        raise AdminError(f"--bind: must be an IP address such as 127.0.0.1 or 0.0.0.0 (got {args.bind!r})") from None
    if args.user is None:
        args.user = generate_user_name()
    if problem := check_name(args.user):
        raise AdminError(f"--user: {problem}")
    if not args.serial.strip():
        raise AdminError("--serial: must not be empty")
    _check_sans(args.san)

    target = os.path.abspath(args.dir)
    if os.path.exists(target) and not os.path.isdir(target):
        raise AdminError(f"{target} exists and is not a folder")
    if os.path.isdir(target) and os.listdir(target) and not args.force:
        raise AdminError(f"{target} already exists and is not empty; refusing to overwrite an "
                         "installation (use --force to replace its config, key, certificate and users)")

    text = gateway_toml(serial=args.serial, bind=args.bind, port=args.lan_port, socket_path=args.socket_path,
                        han_uid=args.han_uid, state_dir=args.state_dir)
    config_path = os.path.join(target, CONFIG_NAME)
    try:   # check before writing anything, e.g. a DIR so deep the socket path does not fit AF_UNIX
        config_schema.parse(tomllib.loads(text), config_path)
    except config_schema.ConfigError as exc:
        raise AdminError(f"the configuration would be invalid: {exc}") from None

    os.makedirs(target, mode=0o755, exist_ok=True)
    os.makedirs(os.path.join(target, "tls"), mode=0o700, exist_ok=True)
    if args.socket_path == SOCKET_REL:
        # The channel socket's folder: its owner binds there, the HAN's group may reach the socket by
        # name, nobody may list it (the same mode the receiver creates it with). A socket path of
        # the installer's (/run/openseg) is made by tmpfiles.d instead.
        run_dir = os.path.join(target, os.path.dirname(SOCKET_REL))
        os.makedirs(run_dir, mode=0o710, exist_ok=True)
        os.chmod(run_dir, 0o710)

    extra = [args.bind] + list(args.san)
    ca_key, ca_cert = os.path.join(target, CA_KEY), os.path.join(target, CA_CERT)
    certs.write_ca(ca_key, ca_cert, extra)
    certs.write_identity(os.path.join(target, "tls", "key.pem"), os.path.join(target, "tls", "cert.pem"), extra,
                         ca_key_path=ca_key, ca_cert_path=ca_cert)

    password = passwords.generate_password()
    user = User(args.user, generate_subscription_id(), passwords.hash_password(password))
    users_path = os.path.join(target, "users.toml")
    with locked(users_path):
        write_atomic(users_path, render({user.name: user}))
    write_atomic(config_path, text, mode=0o644)

    print(f"url: {_url(args.bind, args.lan_port)}")
    print(f"username: {user.name}")
    print(f"password: {password}")
    print(f"subscription: {user.subscription}")
    print(f"ca certificate: {ca_cert}")          # what each phone, TV or computer imports, once


# -- user ------------------------------------------------------------------------------------------
def _users_path(config_path: str) -> str:
    return config_schema.load(config_path).lan["users_file"]


def _load_existing(path: str) -> dict[str, User]:
    if not os.path.exists(path):
        return {}
    try:
        return load(path)
    except UsersFileError as exc:
        raise UsersFileUnusable(f"{exc} (fix or remove the file first)") from None


def cmd_user_add(args) -> None:
    if problem := check_name(args.name):
        raise AdminError(problem)
    if args.subscription is not None and (problem := check_subscription(args.subscription)):
        raise AdminError(problem)
    password = _chosen_password(sys.stdin) if args.password_stdin else passwords.generate_password()
    path = _users_path(args.config)
    with locked(path):
        users = _load_existing(path)
        if args.name in users:
            raise AdminError(f"user {args.name!r} already exists (use `user passwd` to change the password)")
        user = User(args.name, args.subscription or generate_subscription_id(),
                    passwords.hash_password(password))
        users[user.name] = user
        write_atomic(path, render(users))
    print(f"username: {user.name}")
    if not args.password_stdin:
        print(f"password: {password}")
    print(f"subscription: {user.subscription}")


def cmd_user_passwd(args) -> None:
    if problem := check_name(args.name):
        raise AdminError(problem)
    password = _chosen_password(sys.stdin) if args.password_stdin else passwords.generate_password()
    path = _users_path(args.config)
    with locked(path):
        users = _load_existing(path)
        old = users.get(args.name)
        if old is None:
            raise AdminError(f"no user {args.name!r}")
        users[args.name] = User(old.name, old.subscription, passwords.hash_password(password))
        write_atomic(path, render(users))
    print(f"username: {args.name}")
    if not args.password_stdin:
        print(f"password: {password}")


def cmd_user_remove(args) -> None:
    if problem := check_name(args.name):
        raise AdminError(problem)
    path = _users_path(args.config)
    with locked(path):
        users = _load_existing(path)
        if users.pop(args.name, None) is None:
            raise AdminError(f"no user {args.name!r}")
        write_atomic(path, render(users))
    print(f"removed: {args.name}")


def cmd_user_list(args) -> None:
    path = _users_path(args.config)
    for user in sorted(_load_existing(path).values(), key=lambda u: u.name):
        print(f"{user.name}\t{user.subscription}")


# -- cert ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def keeping_owners(*paths: str) -> Iterator[None]:
    """Files replaced inside the block get their old owner back. `openseg-admin` runs as root on a
    real gateway, and a key that became root's (mode 0600) would stop openseg-lan from starting."""
    owners = {}
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(path)
            owners[path] = (st.st_uid, st.st_gid)
    yield
    for path, owner in owners.items():
        st = os.stat(path)
        if (st.st_uid, st.st_gid) != owner:
            os.chown(path, *owner)


def _names_in(cert_path: str) -> list[str]:
    """The host names and addresses the current certificate is for (so a renewal keeps them)."""
    try:
        with open(cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return []
    return [str(n.value) for n in sans if isinstance(n, (x509.DNSName, x509.IPAddress))]


def cmd_cert_renew(args) -> None:
    """A new server key and certificate, signed by the installation's CA, in place; users are
    untouched. Devices that imported the CA certificate keep trusting the gateway. With --if-due only
    when the certificate ends within certs.RENEW_BEFORE_DAYS (or is not the CA's): what the daily
    timer runs. openseg-lan reads the certificate at start: --restart-unit restarts it after a renewal."""
    _check_sans(args.san)
    cfg = config_schema.load(args.config)
    lan, base = cfg.lan, os.path.dirname(cfg.path)
    ca_key, ca_cert = os.path.join(base, CA_KEY), os.path.join(base, CA_CERT)
    names = [lan["bind"]] + _names_in(lan["certificate"]) + list(args.san)
    if not os.path.exists(ca_key):
        # An installation from before the CA: make it now; devices import it once, from then on never.
        certs.write_ca(ca_key, ca_cert, names)
        print(f"ca certificate: {ca_cert} (new: import it once on each phone, TV or computer)")
    with open(ca_cert, "rb") as f:
        ca_pem = f.read()
    if args.if_due:
        try:
            with open(lan["certificate"], "rb") as f:
                why = certs.renewal_due(f.read(), ca_pem)
        except (OSError, ValueError) as exc:
            why = f"it cannot be read ({exc})"
        if why is None:
            print(f"certificate: {lan['certificate']} not due for renewal")
            return
        print(f"renewing: {why}")
    with keeping_owners(lan["private_key"], lan["certificate"]):
        try:
            certs.write_identity(lan["private_key"], lan["certificate"], names, ca_key_path=ca_key,
                                 ca_cert_path=ca_cert)
        except certs.CertError as exc:
            raise AdminError(str(exc)) from None
    cert = x509.load_pem_x509_certificate(open(lan["certificate"], "rb").read())
    print(f"certificate: {lan['certificate']}")
    print(f"sha256: {cert.fingerprint(hashes.SHA256()).hex(':')}")
    print(f"valid until: {cert.not_valid_after_utc.isoformat()}")
    print(f"ca certificate: {ca_cert}")
    if args.restart_unit:
        out = subprocess.run(["systemctl", "try-restart", args.restart_unit], capture_output=True, text=True)
        if out.returncode != 0:
            raise AdminError(f"renewed, but `systemctl try-restart {args.restart_unit}` failed: "
                             f"{' '.join(out.stderr.split()) or out.returncode}")
        print(f"restarted: {args.restart_unit}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openseg-admin", description="Set up OpenSEG and manage LAN users.")
    sub = parser.add_subparsers(dest="command", required=True)

    init = sub.add_parser("init", help="create a new installation in DIR")
    init.add_argument("--dir", required=True)
    init.add_argument("--lan-port", type=int, default=8443)
    init.add_argument("--serial", default=DEFAULT_SERIAL, help="the radio's serial port")
    init.add_argument("--bind", default="127.0.0.1",
                      help="address to listen on (a real gateway: 0.0.0.0 or its LAN address)")
    init.add_argument("--user", help="the first user's name (default: generated, home-<10 hex digits>)")
    init.add_argument("--san", action="append", default=[], metavar="NAME_OR_IP",
                      help="another host name or address for the certificate (repeatable)")
    init.add_argument("--socket-path", default=SOCKET_REL, metavar="PATH",
                      help=f"the HAN->LAN channel socket (default {SOCKET_REL}, relative to DIR)")
    init.add_argument("--han-uid", type=int, metavar="UID",
                      help="the uid the LAN accepts readings from (default: its own, one user for both)")
    init.add_argument("--state-dir", metavar="DIR", help="where the LAN keeps its history (default DIR/state)")
    init.add_argument("--force", action="store_true", help="replace an existing installation in DIR")
    init.set_defaults(func=cmd_init)

    user = sub.add_parser("user", help="manage LAN users").add_subparsers(dest="user_command", required=True)
    for name, func, helptext in (("add", cmd_user_add, "add a user"),
                                 ("passwd", cmd_user_passwd, "set a new password"),
                                 ("remove", cmd_user_remove, "remove a user"),
                                 ("list", cmd_user_list, "list users and their subscriptions")):
        p = user.add_parser(name, help=helptext)
        if name != "list":
            p.add_argument("name", metavar="NAME")
        if name in ("add", "passwd"):
            p.add_argument("--password-stdin", action="store_true",
                           help="read the password from stdin instead of generating one")
        if name == "add":
            p.add_argument("--subscription", metavar="ID", help="subscription id (default: generated)")
        p.add_argument("--config", required=True, help="the gateway's TOML config file")
        p.set_defaults(func=func)
    cert = sub.add_parser("cert", help="manage the TLS certificate").add_subparsers(dest="cert_command", required=True)
    renew = cert.add_parser("renew", help="replace the key and certificate (restart openseg-lan afterwards)")
    renew.add_argument("--san", action="append", default=[], metavar="NAME_OR_IP",
                       help="another host name or address for the certificate (repeatable)")
    renew.add_argument("--config", required=True, help="the gateway's TOML config file")
    renew.add_argument("--if-due", action="store_true",
                       help=f"only when the certificate ends within {certs.RENEW_BEFORE_DAYS} days (the daily timer)")
    renew.add_argument("--restart-unit", metavar="UNIT",
                       help="after a renewal, `systemctl try-restart UNIT` (openseg-lan.service)")
    renew.set_defaults(func=cmd_cert_renew)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except AdminError as exc:
        print(f"openseg-admin: {exc}", file=sys.stderr)
        return 1
    except (config_schema.ConfigError, UsersFileUnusable) as exc:
        print(f"openseg-admin: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"openseg-admin: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
