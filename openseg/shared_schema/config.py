"""The gateway's one TOML configuration file, one section per process (INTERFACE.md).

Both processes read the same file through this module so that a key means the same thing to both.
Every key, its type, default and bounds are in the tables below; an unknown key, a wrong type or an
impossible value raises ConfigError naming the key, and the process stops before it opens anything.
Relative paths are resolved against the directory of the config file, so an installation folder can
be moved as a whole.
"""
from __future__ import annotations

import ipaddress
import os
import zoneinfo
from dataclasses import dataclass
from typing import Any

from .text_file import TextFileError, parse_toml, read_text, shown

PRODUCTION_MIN_POLL_S = 7.0   # the utility's rule: never more than one query per 7 s on the HAN
DEFAULT_SERVICE_W = 48_000.0  # [lan] service_max_w: 200 A at 240 V, a large household service
BAUDRATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400)


class ConfigError(ValueError):
    pass


_REQUIRED = object()

# section -> key -> (type, default, check). check(value) returns an error text or None.
def _positive(v): return None if v > 0 else "must be greater than 0"
def _port(v): return None if 1 <= v <= 65535 else "must be a TCP port 1-65535"
def _baud(v): return None if v in BAUDRATES else f"must be one of {', '.join(map(str, BAUDRATES))}"
def _nonempty(v): return None if v.strip() else "must not be empty"
def _uid(v): return None if 0 <= v < 2**32 else "must be a uid 0-4294967295"
def _retention(v): return None if 0 <= v <= 3660 else "must be 0-3660 days"


def _topic_part(v):
    if not v or any(c in v for c in "+#\0") or v.startswith("/") or v.endswith("/"):
        return "must be an MQTT topic level without +, #, or a leading/trailing /"
    return None


def _https_url(v):
    return None if v.startswith("https://") and len(v) > 8 else "must be an https:// URL"


def _address(v):
    try:
        ipaddress.ip_address(v)
    except ValueError:
        return "must be an IP address such as 127.0.0.1 or 0.0.0.0"
    return None


def _currency(v): return None if 1 <= v <= 999 else "must be an ISO 4217 numeric code such as 978 (EUR) or 840 (USD)"


def _zone(v):
    try:
        zoneinfo.ZoneInfo(v)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return "must be an IANA time zone such as Europe/Paris or America/New_York"
    return None


SCHEMA: dict[str, dict[str, tuple[type, Any, Any]]] = {
    "han": {
        "serial_port": (str, _REQUIRED, _nonempty),
        "baudrate": (int, 9600, _baud),
        "poll_interval_s": (float, PRODUCTION_MIN_POLL_S, _positive),
        "allow_fast_poll": (bool, False, None),
        "response_timeout_s": (float, 3.0, _positive),
        # Smart Energy meters APS-encrypt their replies; an unencrypted one is distrusted by default.
        "require_aps_encryption": (bool, True, None),
        "status_every_s": (float, 30.0, _positive),
    },
    "channel": {
        "socket_path": (str, _REQUIRED, _nonempty),
        # The uid the LAN side accepts datagrams from; default: the LAN process's own uid (dev setup).
        "han_uid": (int, None, _uid),
    },
    "lan": {
        "bind": (str, "127.0.0.1", _address),
        "port": (int, 8443, _port),
        "certificate": (str, "tls/cert.pem", _nonempty),
        "private_key": (str, "tls/key.pem", _nonempty),
        "users_file": (str, "users.toml", _nonempty),
        "time_zone": (str, "UTC", _zone),
        # ISO 4217 numeric code for ESPI ReadingType currency (the gateway states no costs; tools that
        # import Green Button require the field). 840 (USD), what Green Button feeds carry.
        "currency": (int, 840, _currency),
        "state_dir": (str, "state", _nonempty),
        "history_retention_days": (int, 35, _retention),
        # Data older than this is reported `stale` (default: three production poll intervals).
        "stale_after_s": (float, 30.0, _positive),
        # The most power the household's service can draw: the plausibility bound on the energy
        # register (a larger jump is a meter change or a bad value).
        "service_max_w": (float, DEFAULT_SERVICE_W, _positive),
    },
    # openseg-mqtt (optional, off unless this section exists): a LAN client of the gateway's HTTPS
    # JSON that publishes to an MQTT broker with Home Assistant discovery.
    "mqtt": {
        "host": (str, _REQUIRED, _nonempty),
        "port": (int, 1883, _port),
        "tls": (bool, False, None),
        "ca_file": (str, None, _nonempty),            # the broker's CA; default: the system's
        "username": (str, None, _nonempty),
        "password_file": (str, None, _nonempty),
        "client_id": (str, "openseg-mqtt", _nonempty),
        "discovery_prefix": (str, "homeassistant", _topic_part),
        "topic_prefix": (str, "openseg", _topic_part),
        "interval_s": (float, 10.0, _positive),
        # The gateway, as any LAN client sees it: default https://127.0.0.1:[lan] port, trusting
        # [lan] certificate.
        "gateway_url": (str, None, _https_url),
        "gateway_ca_file": (str, None, _nonempty),
        "gateway_username": (str, _REQUIRED, _nonempty),
        "gateway_password_file": (str, _REQUIRED, _nonempty),
    },
}
OPTIONAL_SECTIONS = {"mqtt"}
PATH_KEYS = {("han", "serial_port"), ("channel", "socket_path"), ("lan", "certificate"),
             ("lan", "private_key"), ("lan", "users_file"), ("lan", "state_dir"), ("mqtt", "ca_file"),
             ("mqtt", "password_file"), ("mqtt", "gateway_ca_file"), ("mqtt", "gateway_password_file")}


@dataclass(frozen=True)
class Config:
    path: str
    han: dict[str, Any]
    channel: dict[str, Any]
    lan: dict[str, Any]
    mqtt: dict[str, Any] | None = None      # None: the section is absent, openseg-mqtt is off


def _typed(section: str, key: str, value: Any, typ: type) -> Any:
    name = f"[{section}] {key}"
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if typ is int and isinstance(value, bool) or not isinstance(value, typ):
        raise ConfigError(f"{name}: expected {typ.__name__}, got {type(value).__name__} {value!r}")
    return value


def parse(data: dict[str, Any], path: str = "<config>") -> Config:
    base = os.path.dirname(os.path.abspath(path))
    out: dict[str, dict[str, Any]] = {}
    for section in data:
        if section not in SCHEMA:
            raise ConfigError(f"[{shown(section)}]: unknown section (known: {', '.join(SCHEMA)})")
    for section, keys in SCHEMA.items():
        if section in OPTIONAL_SECTIONS and section not in data:
            continue
        given = data.get(section, {})
        if not isinstance(given, dict):
            raise ConfigError(f"[{section}]: must be a table")
        for key in given:
            if key not in keys:
                raise ConfigError(f"[{section}] {shown(key)}: unknown key (known: {', '.join(keys)})")
        values = {}
        for key, (typ, default, check) in keys.items():
            if key not in given:
                if default is _REQUIRED:
                    raise ConfigError(f"[{section}] {key}: missing")
                value = default
            else:
                value = _typed(section, key, given[key], typ)
                if check and (problem := check(value)):
                    raise ConfigError(f"[{section}] {key}: {problem} (got {value!r})")
            if (section, key) in PATH_KEYS and value is not None:
                if "\0" in value:
                    raise ConfigError(f"[{section}] {key}: a path cannot hold a NUL character (got {value!r})")
                value = os.path.normpath(os.path.join(base, os.path.expanduser(value)))
            values[key] = value
        out[section] = values
    han = out["han"]
    if han["poll_interval_s"] < PRODUCTION_MIN_POLL_S and not han["allow_fast_poll"]:
        raise ConfigError(
            f"[han] poll_interval_s: {han['poll_interval_s']} s is faster than the utility's limit of "
            f"one query per {PRODUCTION_MIN_POLL_S:g} s (set allow_fast_poll = true only in a lab)")
    if han["response_timeout_s"] >= han["poll_interval_s"]:
        raise ConfigError("[han] response_timeout_s: must be shorter than poll_interval_s "
                          f"({han['response_timeout_s']} >= {han['poll_interval_s']})")
    if len(out["channel"]["socket_path"].encode()) > 107:
        raise ConfigError("[channel] socket_path: longer than the 107 bytes an AF_UNIX address holds")
    return Config(path=os.path.abspath(path), **out)


def load(path: str) -> Config:
    """The config file at `path`, checked; every fault (unreadable, a directory, not UTF-8, not TOML,
    a bad key) is a ConfigError whose one-line message names the file or the key."""
    try:
        data = parse_toml(read_text(path, "config file"), path)
    except TextFileError as exc:
        raise ConfigError(str(exc)) from None
    try:
        return parse(data, path)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
