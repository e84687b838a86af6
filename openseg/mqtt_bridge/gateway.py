"""The gateway as openseg-mqtt reads it: HTTPS GET of its JSON with Basic auth, trusting only the CA
the config names (the gateway's own certificate by default), with a bounded wait."""
from __future__ import annotations

import base64
import http.client
import json
import ssl
import urllib.parse
from decimal import Decimal

TIMEOUT_S = 10.0
MAX_BODY = 1 << 20


class GatewayError(Exception):
    """The gateway did not answer usefully; the message says why, in one line."""


class Gateway:
    def __init__(self, url: str, username: str, password: str, cafile: str):
        parts = urllib.parse.urlsplit(url)
        self.url = url.rstrip("/")
        self.host, self.port = parts.hostname, parts.port or 443
        self.auth = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
        try:
            self.context = ssl.create_default_context(cafile=cafile)
        except (OSError, ssl.SSLError) as exc:
            raise GatewayError(f"cannot load the gateway's CA {cafile}: {exc}") from None

    def get_json(self, path: str) -> dict:
        """The JSON answer of `path`; numbers with a fraction as Decimal (the gateway's exact digits)."""
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=TIMEOUT_S)
        try:
            conn.request("GET", path, headers={"Authorization": self.auth, "Accept": "application/json"})
            resp = conn.getresponse()
            body = resp.read(MAX_BODY + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise GatewayError(f"{self.url}{path}: {exc}") from None
        finally:
            conn.close()
        if resp.status != 200:
            raise GatewayError(f"{self.url}{path}: HTTP {resp.status} {resp.reason}")
        if len(body) > MAX_BODY:
            raise GatewayError(f"{self.url}{path}: answer larger than {MAX_BODY} bytes")
        try:
            data = json.loads(body, parse_float=Decimal)
        except ValueError as exc:
            raise GatewayError(f"{self.url}{path}: not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise GatewayError(f"{self.url}{path}: not a JSON object")
        return data
