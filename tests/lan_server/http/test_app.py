"""The WSGI app in-process: routing, headers, static files, errors, with fake resource builders that
record how they were called. The same behaviours through a real server are in
tests/system/test_openseg_lan.py."""
from __future__ import annotations

import base64
import gzip
import io
import json
import os
import re

import pytest

from openseg.lan_server.accounts import passwords, users_file
from openseg.lan_server.http.access_log import AccessLog
from openseg.lan_server.http.app import CSP, STATIC_DIR, STATIC_TYPES, LanApp
from openseg.lan_server.http.web_resources import Response as Reply
from openseg.lan_server.http.auth import Authenticator
from openseg.lan_server.accounts.users_file import User, UsersStore

PAGE = b"<!doctype html><title>OpenSEG</title><script src=/static/app.js></script>"


class FakeResources:
    def __init__(self):
        self.calls = []
        self.espi_reply = Reply(200, "application/atom+xml", b"<feed/>", {"Cache-Control": "no-store"})

    def current_json(self, readings):
        self.calls.append(("current", readings))
        return Reply(200, "application/json", b'{"status":"ok"}', {"Cache-Control": "no-store"})

    def status_json(self, readings, counters, started):
        self.calls.append(("status", counters, started))
        return Reply(200, "application/json", b"{}", {})

    def history_json(self, readings, params):
        self.calls.append(("history", dict(params)))
        return Reply(200, "application/json", b"[]", {})

    def espi(self, readings, **kw):
        self.calls.append(("espi", kw))
        return self.espi_reply


@pytest.fixture
def static_dir(tmp_path):
    d = tmp_path / "static"
    d.mkdir()
    (d / "index.html").write_bytes(PAGE)
    (d / "app.js").write_text("console.log(1)")
    (d / "app.css").write_text("body{}")
    (d / "icon.svg").write_text("<svg/>")
    (d / "notes.unknownext").write_text("x")
    (d / "sub").mkdir()
    (d / "sub" / "x.css").write_text("x")
    (tmp_path / "secret.txt").write_text("secret")
    os.symlink(tmp_path / "secret.txt", d / "link.txt")
    os.mkfifo(d / "fifo.txt")
    return d


@pytest.fixture
def app(tmp_path, static_dir):
    path = tmp_path / "users.toml"
    users = {n: User(n, f"sub-{n}", passwords.hash_password(f"{n}-password", ln=10, r=8, p=1))
             for n in ("alice", "bob")}
    path.write_text(users_file.render(users))
    auth = Authenticator(UsersStore(str(path)), address_limit=3, user_limit=6)
    fd = os.open(tmp_path / "access.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        with AccessLog(fd) as access_log:
            yield LanApp(authenticator=auth, readings=object(), channel_counters=lambda: {"received": 7},
                         lan_started=1234.5, time_zone="Europe/Paris", default_base_url="https://gw.local:8443/",
                         static_dir=str(static_dir), resources=FakeResources(),
                         link_hosts=frozenset({"gw.local", "gateway.lan", "fe80::1", "192.168.1.20"}),
                         access_log=access_log)
    finally:
        os.close(fd)


def access_lines(app, tmp_path) -> list[str]:
    """What the app fixture's access log holds, line by line, once its writer has written them."""
    assert app.access_log.flush(timeout=10)
    return (tmp_path / "access.log").read_bytes().decode("utf-8").splitlines(keepends=True)


def call(app, path, *, user="alice", method="GET", query="", host="gw.local:8443", remote="10.0.0.1",
         headers=None):
    env = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query, "REMOTE_ADDR": remote,
           "HTTP_HOST": host, "wsgi.input": io.BytesIO(b""), "wsgi.url_scheme": "https"}
    if user:
        token = base64.b64encode(f"{user}:{user}-password".encode()).decode()
        env["HTTP_AUTHORIZATION"] = f"Basic {token}"
    env.update(headers or {})
    seen = {}

    def start_response(status, hdrs, exc_info=None):
        seen["status"], seen["headers"] = status, hdrs

    body = b"".join(app(env, start_response))
    names = [k.lower() for k, _ in seen["headers"]]
    assert len(names) == len(set(names)), f"duplicate headers: {names}"
    return int(seen["status"][:3]), {k.lower(): v for k, v in seen["headers"]}, body


SECURITY = {"strict-transport-security", "x-content-type-options", "x-frame-options",
            "content-security-policy", "referrer-policy"}


@pytest.mark.parametrize("path", ["/", "/static/app.js", "/api/v1/current", "/api/v1/status",
                                  "/api/v1/history", "/api/v1/whoami", "/espi/1_1/resource/Batch/Subscription/sub-alice",
                                  "/nothing-here", "/static/../app.py"])
def test_every_path_needs_auth(app, path):
    status, headers, body = call(app, path, user=None)
    assert status == 401
    assert headers["www-authenticate"] == 'Basic realm="OpenSEG", charset="UTF-8"'
    assert SECURITY <= headers.keys()
    assert headers["cache-control"] == "no-store"
    assert app.resources.calls == []


def test_security_headers_on_every_answer(app):
    for path in ("/", "/api/v1/current", "/nothing-here", "/static/nope.css"):
        status, headers, _ = call(app, path)
        assert SECURITY <= headers.keys(), path
        assert headers["content-security-policy"] == CSP
        assert headers["x-frame-options"] == "DENY"
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["strict-transport-security"].startswith("max-age=")
        assert headers["server"] == "OpenSEG"


def test_csp_lets_the_page_run_from_self_only():
    directives = dict(d.strip().split(" ", 1) for d in CSP.split(";"))
    assert directives["default-src"] == "'none'"
    for name in ("script-src", "style-src", "connect-src"):
        assert directives[name] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe-inline" not in CSP and "unsafe-eval" not in CSP


def test_routes_reach_the_resources(app):
    res = app.resources
    assert call(app, "/api/v1/current")[0] == 200
    assert call(app, "/api/v1/status")[0] == 200
    assert call(app, "/api/v1/history", query="minutes=5")[0] == 200
    assert res.calls[0][0] == "current"
    assert res.calls[1] == ("status", {"received": 7}, 1234.5)
    assert res.calls[2] == ("history", {"minutes": "5"})


def test_whoami_names_the_user_and_its_subscription(app):
    status, headers, body = call(app, "/api/v1/whoami", user="bob")
    assert status == 200 and headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store"
    assert json.loads(body) == {"username": "bob", "subscription": "sub-bob"}
    assert call(app, "/api/v1/whoami", user=None)[0] == 401


def test_espi_gets_the_authenticated_users_subscription(app):
    call(app, "/espi/1_1/resource/Subscription/sub-alice/UsagePoint", query="max-results=2")
    call(app, "/espi/1_1/resource/Batch/Subscription/sub-alice", user="bob")
    (_, first), (_, second) = app.resources.calls
    assert first == {"path": "Subscription/sub-alice/UsagePoint", "params": {"max-results": "2"},
                     "subscription": "sub-alice", "base_url": "https://gw.local:8443", "time_zone": "Europe/Paris"}
    assert second["subscription"] == "sub-bob"             # from the login, never from the URL


def test_download_switch(app):
    status, headers, body = call(app, "/espi/1_1/resource/Batch/Subscription/sub-alice", query="download=1")
    assert status == 200 and body == b"<feed/>"
    assert headers["content-disposition"] == 'attachment; filename="openseg-sub-alice.xml"'
    assert app.resources.calls[-1][1]["params"] == {}          # not passed on as an ESPI parameter
    status, headers, _ = call(app, "/espi/1_1/resource/Batch/Subscription/sub-alice")
    assert "content-disposition" not in headers
    assert call(app, "/espi/1_1/resource/Batch/Subscription/sub-alice", query="download=yes")[0] == 400
    app.resources.espi_reply = Reply(403, "text/plain", b"not yours\n", {})
    status, headers, _ = call(app, "/espi/1_1/resource/Batch/Subscription/other", query="download=1")
    assert status == 403 and "content-disposition" not in headers


@pytest.mark.parametrize("host", ["evil.example/<script>", "a b", "x" * 300, "", "[::1", "host:99999999",
                                  "evil.example", "evil.example:8443", "gw.local.evil.example", "[fe80::2]:8443",
                                  "192.168.1.21"])
def test_odd_or_foreign_host_headers_get_the_configured_base(app, host):
    call(app, "/espi/1_1/resource/ReadingType/1", host=host)
    assert app.resources.calls[-1][1]["base_url"] == "https://gw.local:8443"


@pytest.mark.parametrize("host", ["[fe80::1]:8443", "[FE80:0::1]:8443", "Gateway.LAN:8443", "192.168.1.20:8443",
                                  "gateway.lan"])
def test_host_headers_the_certificate_names_are_kept(app, host):
    call(app, "/espi/1_1/resource/ReadingType/1", host=host)
    assert app.resources.calls[-1][1]["base_url"] == f"https://{host}"


@pytest.mark.parametrize("query", ["a=1&a=2", "&".join(f"p{i}=1" for i in range(40)), "x=%ff"])
def test_bad_queries_are_400(app, query):
    status, _, body = call(app, "/api/v1/history", query=query)
    assert status == 400 and body


def test_static_files(app):
    status, headers, body = call(app, "/")
    assert status == 200 and body == PAGE and headers["content-type"] == "text/html; charset=utf-8"
    assert headers["cache-control"] == "private, no-cache"
    for name, ctype in (("app.js", "text/javascript; charset=utf-8"), ("app.css", "text/css; charset=utf-8"),
                        ("icon.svg", "image/svg+xml"), ("index.html", "text/html; charset=utf-8")):
        status, headers, _ = call(app, f"/static/{name}")
        assert status == 200 and headers["content-type"] == ctype, name


@pytest.mark.parametrize("path", ["/static/../app.py", "/static/..", "/static/", "/static/.hidden",
                                  "/static/sub/x.css", "/static/link.txt", "/static/fifo.txt",
                                  "/static/notes.unknownext", "/static//etc/passwd", "/static/app.js/",
                                  "/static/..%2fapp.py", "/static/app.js\x00.css", "/static/sub"])
def test_static_files_cannot_escape_or_surprise(app, path):
    status, _, body = call(app, path)
    assert status == 404, path
    assert b"secret" not in body


def test_a_link_or_fifo_with_a_served_type_is_404(app, static_dir, tmp_path):
    os.symlink(tmp_path / "secret.txt", static_dir / "link.css")
    os.mkfifo(static_dir / "fifo.css")
    for path in ("/static/link.css", "/static/fifo.css"):
        status, _, body = call(app, path)
        assert status == 404 and b"secret" not in body, path


def test_the_content_types_are_those_of_the_files_shipped():
    kinds = {os.path.splitext(name)[1] for name in os.listdir(STATIC_DIR)}
    assert kinds == set(STATIC_TYPES)


def test_head_has_headers_but_no_body(app):
    status, headers, body = call(app, "/static/app.css", method="HEAD")
    assert status == 200 and body == b"" and headers["content-length"] == "6"


def test_other_methods_are_405_after_auth(app):
    assert call(app, "/api/v1/current", method="POST", user=None)[0] == 401
    status, headers, _ = call(app, "/api/v1/current", method="POST")
    assert status == 405 and headers["allow"] == "GET, HEAD"


def test_a_failing_resource_is_a_plain_500(app, caplog):
    def boom(readings):
        raise RuntimeError("secret internal detail")
    app.resources.current_json = boom
    status, headers, body = call(app, "/api/v1/current")
    assert status == 500 and body == b"internal error\n"
    assert "Traceback" not in body.decode() and "secret" not in body.decode()
    assert SECURITY <= headers.keys()
    assert "secret internal detail" in caplog.text         # ... but the log has it, for the admin


def test_resources_cannot_override_security_headers_or_inject_lines(app, caplog):
    app.resources.espi_reply = Reply(200, "application/atom+xml", b"<feed/>",
                                     {"content-security-policy": "default-src *", "X-Evil": "a\r\nSet-Cookie: x=1",
                                      "Retry-After": "5", "Content-Type": "text/html"})
    status, headers, _ = call(app, "/espi/1_1/resource/ReadingType/1")
    assert headers["content-security-policy"] == CSP
    assert "x-evil" not in headers and headers["retry-after"] == "5"
    assert headers["content-type"] == "application/atom+xml"


def test_throttled_is_429_with_retry_after(app):
    wrong = {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(b"alice:wrong-one").decode()}
    for _ in range(3):
        assert call(app, "/api/v1/current", user=None, headers=wrong)[0] == 401
    status, headers, body = call(app, "/api/v1/current")           # right password, same address
    assert status == 429 and int(headers["retry-after"]) > 0
    assert SECURITY <= headers.keys() and "www-authenticate" not in headers
    assert call(app, "/api/v1/current", remote="10.0.0.2")[0] == 200


def test_watchdog_probe_is_answered_but_not_access_logged(app, tmp_path):
    probe = {"HTTP_X_OPENSEG_PROBE": app.probe_token}
    assert call(app, "/", user=None, headers=probe)[0] == 401
    assert access_lines(app, tmp_path) == []
    assert call(app, "/", user=None, headers={"HTTP_X_OPENSEG_PROBE": "guess"})[0] == 401
    assert call(app, "/", user=None, headers={"HTTP_X_OPENSEG_PROBE": "gu\xe9ss"})[0] == 401
    assert len(access_lines(app, tmp_path)) == 2


def test_access_log_is_one_line_with_user_and_status(app, tmp_path):
    call(app, "/api/v1/current\nforged line", method="G\rET")
    call(app, "/api/v1/whoami", user="bob")
    forged, whoami = access_lines(app, tmp_path)
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.fullmatch(stamp + r' INFO openseg\.lan\.access: 10\.0\.0\.1 alice "G\\rET /api/v1/current\\nforged '
                        r'line" 405 18 \d+\.\dms\n', forged), forged
    assert re.fullmatch(stamp + r' INFO openseg\.lan\.access: 10\.0\.0\.1 bob "GET /api/v1/whoami" 200 \d+ '
                        r'\d+\.\dms\n', whoami), whoami


@pytest.mark.parametrize("accept, gzipped", [("gzip, deflate, br", True), ("br;q=1.0, gzip;q=0.8", True),
                                            ("*", True), ("gzip;q=0", False), ("deflate", False),
                                            (None, False), ("gzip;q=0.000", False)])
def test_json_and_page_files_are_gzipped_when_asked_and_large(app, accept, gzipped):
    big = json.dumps({"points": [{"time": i, "demand_w": 1500} for i in range(200)]}).encode()
    app.resources.history_json = lambda readings, params: Reply(200, "application/json", big, {})
    headers = {"HTTP_ACCEPT_ENCODING": accept} if accept else {}
    status, hdrs, body = call(app, "/api/v1/history", headers=headers)
    assert status == 200 and int(hdrs["content-length"]) == len(body)
    if gzipped:
        assert hdrs["content-encoding"] == "gzip" and hdrs["vary"] == "Accept-Encoding"
        assert gzip.decompress(body) == big and len(body) < len(big) / 4
    else:
        assert "content-encoding" not in hdrs and body == big
    # Small answers and the ESPI Atom are sent as they are.
    assert "content-encoding" not in call(app, "/api/v1/current", headers=headers)[1]
    app.resources.espi_reply = Reply(200, "application/atom+xml", b"<feed>" + b" " * 5000 + b"</feed>", {})
    assert "content-encoding" not in call(app, "/espi/1_1/resource/Batch/Subscription/sub-alice",
                                          headers=headers)[1]


def test_an_answer_that_stands_is_handed_out_again_for_its_path_subscription_and_host_only(app):
    """LanApp._authorized: an answer with `stands` (a current value) answers the next GET or HEAD of the
    same path, without a query, by a user of the same subscription, naming the same Host, without the
    resources being asked, while stands() is true. Anything else is asked for afresh; authentication
    and the method come first; answers without `stands` are never held; held ones are bounded."""
    from openseg.lan_server.http.app import STANDING_ANSWERS
    standing = [True]
    app.resources.espi_reply = Reply(200, "application/atom+xml", b"<feed>1</feed>", {"Cache-Control": "no-store"},
                                     stands=lambda: standing[0])

    def get(path="/espi/1_1/resource/x", **kw):
        status, _, body = call(app, path, **kw)      # the file's helper: alice's right password by default
        return status, body

    def asked():
        return sum(1 for call in app.resources.calls if call[0] == "espi")

    assert get() == (200, b"<feed>1</feed>") and asked() == 1
    assert get() == (200, b"<feed>1</feed>") and get(method="HEAD") == (200, b"") and asked() == 1
    # What is held apart: another subscription (bob's), another Host, another path, any query.
    for other in ({"user": "bob"}, {"host": "gateway.lan"}, {"path": "/espi/1_1/resource/y"}, {"query": "a=1"},
                  {"query": "a=1"}):
        before = asked()
        assert get(**other)[0] == 200 and asked() == before + 1, other
    before = asked()
    assert get(user="bob")[0] == 200 and get(host="gateway.lan")[0] == 200 and asked() == before
    # Authentication and the method first, for a held path too.
    wrong = {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(b"alice:wrong").decode()}
    assert get(headers=wrong)[0] == 401 and get(method="POST")[0] == 405
    assert asked() == before
    # No longer standing: asked again, and the new answer held in its place.
    standing[0] = False
    app.resources.espi_reply = Reply(200, "application/atom+xml", b"<feed>2</feed>", {}, stands=lambda: True)
    assert get() == (200, b"<feed>2</feed>") and asked() == before + 1
    assert get() == (200, b"<feed>2</feed>") and asked() == before + 1
    # Without `stands`: asked every time.
    app.resources.espi_reply = Reply(200, "application/atom+xml", b"<feed>3</feed>", {})
    assert get(path="/espi/1_1/resource/z") == get(path="/espi/1_1/resource/z") == (200, b"<feed>3</feed>")
    assert asked() == before + 3
    # Bounded (a client may name any Host): emptied when STANDING_ANSWERS are held and another comes.
    app.resources.espi_reply = Reply(200, "application/atom+xml", b"<feed>4</feed>", {}, stands=lambda: True)
    app._standing.clear()
    for i in range(STANDING_ANSWERS):
        get(host=f"h{i}.example")
    before = asked()
    assert get(host="h0.example") == (200, b"<feed>4</feed>") and asked() == before     # still held
    get(host="one-more.example")
    assert get(host="h0.example") == (200, b"<feed>4</feed>") and asked() == before + 2  # let go


def test_an_answer_to_a_query_is_never_handed_to_a_request_without_one(app):
    """Download My Data (`download=1`, the same answer with Content-Disposition) and any other query are
    answered afresh and not held: the plain request after them is asked for again and gets the plain
    answer, even when the answer to the query says it stands."""
    app.resources.espi_reply = Reply(200, "application/atom+xml", b"<feed/>", {}, stands=lambda: True)

    def headers(query):
        return call(app, "/espi/1_1/resource/x", query=query)[1]

    for query in ("download=1", "a=1"):
        app._standing.clear()
        assert ("content-disposition" in headers(query)) == (query == "download=1")
        before = len(app.resources.calls)
        assert "content-disposition" not in headers("") and len(app.resources.calls) == before + 1, query


def test_a_held_answer_follows_the_users_file_when_it_moves_a_user_to_another_subscription(tmp_path):
    """The held answer's key has the subscription the users file gives the user now, not the user's
    name: moved to another subscription, alice is answered for that one, not from what was held."""
    path = tmp_path / "users.toml"

    def write(subscription):
        hashed = passwords.hash_password("alice-password", ln=10, r=8, p=1)
        path.write_text(users_file.render({"alice": User("alice", subscription, hashed)}))
        os.utime(path, ns=(len(subscription), len(subscription)))      # a stamp of its own each time

    class BySubscription(FakeResources):
        def espi(self, readings, **kw):
            self.calls.append(("espi", kw))
            return Reply(200, "application/atom+xml", f"<feed>{kw['subscription']}</feed>".encode(), {},
                         stands=lambda: True)

    write("sub-a")
    fd = os.open(tmp_path / "access.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        with AccessLog(fd) as access_log:
            app = LanApp(authenticator=Authenticator(UsersStore(str(path), check_interval_s=0)), readings=object(),
                         channel_counters=dict, lan_started=0.0, time_zone="UTC",
                         default_base_url="https://gw.local:8443", resources=BySubscription(), access_log=access_log)
            ask = lambda: call(app, "/espi/1_1/resource/x")[2]       # noqa: E731
            assert ask() == ask() == b"<feed>sub-a</feed>" and len(app.resources.calls) == 1
            write("sub-bb")
            assert ask() == b"<feed>sub-bb</feed>" and len(app.resources.calls) == 2
    finally:
        os.close(fd)


def test_the_headers_of_an_answer_that_stands_are_prepared_once_and_nothing_else_is_kept(app):
    """LanApp._prepared: the status line and headers of an answer that stands (a memoised current value) are
    assembled once and handed out again while that answer stands, with every security header; an
    answer without `stands` is assembled per request and not held (Download My Data is megabytes);
    held answers are bounded, so an old one is let go."""
    import gc
    import weakref
    from openseg.lan_server.http.app import PREPARED_ANSWERS

    def lists(reply, n=2):
        app.resources.espi_reply = reply
        got = []
        env = {"REQUEST_METHOD": "GET", "PATH_INFO": "/espi/1_1/resource/x", "QUERY_STRING": "",
               "REMOTE_ADDR": "10.0.0.1", "HTTP_HOST": "gw.local:8443",
               "HTTP_AUTHORIZATION": "Basic " + base64.b64encode(b"alice:alice-password").decode()}
        for _ in range(n):
            app(dict(env), lambda status, headers, exc_info=None: got.append((status, headers)))
        return got

    shared = Reply(200, "application/atom+xml", b"<feed>1</feed>", {"Cache-Control": "no-store"},
                   stands=lambda: False)       # (not handed out again: each request asks the resources)
    (s1, h1), (s2, h2) = lists(shared)
    assert app._prepared(shared)[1] is app._prepared(shared)[1]         # assembled once
    assert h1 == h2 and s1 == s2 == "200 OK"
    # The server is handed a copy each time (PEP 3333 lets it change the list): a change stays there.
    assert h1 is not h2
    h1.append(("X-Changed-By-The-Server", "1"))
    ((_, h3),) = lists(shared, n=1)
    assert h3 == h2
    names = {k.lower() for k, _ in h1}
    assert SECURITY <= names and dict(h2)["Content-Length"] == "14"
    # Without `stands`: the same headers, a list of their own each time, and the answer is not held.
    single = Reply(200, "application/atom+xml", b"<feed>1</feed>", {"Cache-Control": "no-store"})
    (_, g1), (_, g2) = lists(single)
    assert g1 == g2 == h2 and g1 is not g2
    gone = weakref.ref(single)
    app.resources.espi_reply = single = None
    gc.collect()
    assert gone() is None
    # Held shared answers are bounded: after PREPARED_ANSWERS others, the first is let go.
    first = weakref.ref(shared)
    shared = None
    for i in range(PREPARED_ANSWERS):
        lists(Reply(200, "application/atom+xml", f"<feed>{i}</feed>".encode(), {}, stands=lambda: False), n=1)
    app.resources.espi_reply = None
    gc.collect()
    assert first() is None
