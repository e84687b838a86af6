"""The in-home display page in a real headless Chromium against a real stack.

One stack (openseg-emulator on a pty + openseg-han + openseg-lan, each the real console script, polling
every 0.5 s) serves the whole module; each test opens its own browser context (fresh cookies, cache
and auth) in one Chromium launched from Debian's package with a fresh profile. The browser trusts
exactly the installation's own certificate (by its public key), not every certificate.

Every test also checks the two things the page promises whatever happens: no console error / page
error, and no request to anything but the gateway's own origin.

Waits are conditions with deadlines (Playwright's `expect`, `wait_for_function`, or `_wait` below),
never a sleep that hopes. The screenshots in docs/screenshots/ are written by the last test.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
from datetime import datetime
from pathlib import Path

import pytest

from openseg_emulator.devstack import Stack, wait_until

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("OPENSEG_CHROMIUM", "/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
# The README links the committed pictures here; point this elsewhere (CI: tests/artifacts) to keep
# a run from touching the work tree.
SCREENSHOTS = Path(os.environ.get("OPENSEG_SCREENSHOT_DIR", ROOT / "docs" / "screenshots"))
POLL_S = 0.5
STALE_AFTER_S = 2.0          # the LAN says "stale" after this, and "HAN silent" after twice this
LOAD_W = 1500
START_RECEIVED_KWH = "2"      # a solar household's export register is well above 0 (one that goes back)
# Display tolerance: the emulated meter's scaling (multiplier 1, divisor 1000) resolves 1 W, and the
# page shows kW with two decimals (5 W rounding), so the shown value is within 6 W of the truth.
DEMAND_TOL_KW = 0.006
WAIT_S = 15.0                # deadline for anything the stack has to do (a poll, a state change)
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-default-apps", "--disable-extensions", "--no-default-browser-check"]
# Chromium's own line for a request that failed at the network level (the server was down).
NETWORK_FAILURE = re.compile(r"^Failed to load resource: net::ERR_[A-Z_]+$")


def _browser_problem() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed: .venv/bin/pip install -e '.[test]' (or pip install playwright)"
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return (f"no Chromium at {CHROMIUM}: install Debian's browser with "
                "`apt-get install chromium` (or set OPENSEG_CHROMIUM)")
    return None


def _require_browser() -> None:
    """Skip with the reason on a developer's machine; fail in CI, where a skip would hide a gap."""
    problem = _browser_problem()
    if problem:
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(f"browser tests cannot run: {problem}", pytrace=False)
        pytest.skip(problem)


def _wait(predicate, timeout: float, what: str, interval: float = 0.1):
    return wait_until(predicate, timeout, what, interval)


def _number(text: str) -> float:
    """A number as the page writes it (en-US grouping, U+2212 minus)."""
    return float(text.replace("\u2212", "-").replace(",", "").strip())


def _spki_sha256(cert_pem: str) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    cert = x509.load_pem_x509_certificate(Path(cert_pem).read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


# Text the page must keep readable (WCAG 2 AA, 4.5:1) in both themes, against the colour behind it.
CONTRAST_SELECTORS = ["h1 .subtitle", "#state", ".label", "#demand-value", "#direction", ".big .unit",
                      "#today-value", "#total-value", "#today-export-value", "#total-export-value",
                      "#updated", "#chart-title", ".range button",
                      "#chart-summary", ".legend", ".facts dt", "#st-meter", "#st-detail", "#st-lost",
                      "#download", ".hint", ".foot p"]
CONTRAST_JS = """(selectors) => {
  const rgb = s => (s.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => [r, g, b].map(v => { v /= 255; return v <= 0.03928 ? v / 12.92
                                                  : Math.pow((v + 0.055) / 1.055, 2.4); })
                                      .reduce((a, v, i) => a + v * [0.2126, 0.7152, 0.0722][i], 0);
  const behind = el => { for (; el; el = el.parentElement) { const c = rgb(getComputedStyle(el).backgroundColor);
                           if (c.length === 3 || c[3] > 0) return c.slice(0, 3); } return [255, 255, 255]; };
  const low = [];
  for (const sel of selectors) for (const el of document.querySelectorAll(sel)) {
    if (!el.getClientRects().length || !el.textContent.trim()) continue;
    const a = lum(rgb(getComputedStyle(el).color)), b = lum(behind(el));
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    if (ratio < 4.5) low.push(sel + ' ' + ratio.toFixed(2));
  }
  return low;
}"""


# -- fixtures -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    _require_browser()
    with Stack(tmp_path_factory.mktemp("page-stack"), poll_interval_s=POLL_S, load_w=LOAD_W,
               lan_overrides={"stale_after_s": STALE_AFTER_S},
               emulator_args=["--start-received-kwh", START_RECEIVED_KWH]) as s:
        _wait(lambda: s.get_json("/api/v1/current")[1].get("status") == "ok", 30,
              "the stack's first reading")
        yield s


@pytest.fixture(scope="module")
def browser(stack):
    from playwright.sync_api import expect, sync_playwright
    expect.set_options(timeout=WAIT_S * 1000)
    with sync_playwright() as pw:
        # Playwright gives the browser a fresh temporary profile (--user-data-dir) and removes it after.
        trust = f"--ignore-certificate-errors-spki-list={_spki_sha256(stack.cafile)}"
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=LAUNCH_ARGS + [trust])
        try:
            yield browser
        finally:
            browser.close()


class Watch:
    """Everything one context did that the page must never do: console errors, uncaught exceptions,
    requests to anything but the gateway."""

    def __init__(self, context, origin: str):
        self.origin = origin
        self.requests: list[str] = []
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        context.on("request", lambda req: self.requests.append(req.url))
        context.on("page", self._page)
        for page in context.pages:
            self._page(page)

    def _page(self, page) -> None:
        page.on("console", lambda msg: msg.type == "error" and self.console_errors.append(msg.text))
        page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))

    def foreign(self) -> list[str]:
        return [u for u in self.requests if not (u == self.origin or u.startswith(self.origin + "/"))]

    def check(self, allow_network_failures: bool = False) -> None:
        errors = [m for m in self.console_errors
                  if not (allow_network_failures and NETWORK_FAILURE.match(m))]
        assert not self.page_errors, f"uncaught errors in the page: {self.page_errors}"
        assert not errors, f"console errors: {errors}"
        assert self.requests, "no request was recorded at all"
        assert not self.foreign(), f"requests outside the gateway: {self.foreign()}"


@pytest.fixture
def open_page(browser, stack):
    """open_page(**context options) -> (page, watch); the page is at the gateway's / and loaded."""
    contexts = []

    def _open(*, credentials: bool = True, go: bool = True, **options):
        opts = dict(viewport={"width": 1280, "height": 800}, locale="en-US", accept_downloads=True,
                    service_workers="block")
        if credentials:
            opts["http_credentials"] = {"username": stack.username, "password": stack.password}
        opts.update(options)
        context = browser.new_context(**opts)
        contexts.append(context)
        watch = Watch(context, stack.url)
        page = context.new_page()
        if go:
            page.goto(stack.url + "/", wait_until="load")
        return page, watch

    yield _open
    for context in contexts:
        context.close()


def _current(stack) -> dict:
    status, body = stack.get_json("/api/v1/current")
    assert status == 200, status
    return body


def _demand_kw(page) -> float | None:
    text = page.locator("#demand-value").inner_text()
    try:
        return _number(text)
    except ValueError:
        return None


def _first_today(stack, key: str) -> tuple[datetime, dict]:
    """Local midnight, and the first reading since then in the gateway's history that carries `key`."""
    status, hist = stack.get_json("/api/v1/history?minutes=1440")
    assert status == 200
    midnight = datetime.now().astimezone().replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight, next(p for p in hist["points"] if p[key] is not None
                          and datetime.fromisoformat(p["time"].replace("Z", "+00:00")) >= midnight)


def _chart_lines(page) -> list[list[tuple[float, float]]]:
    """The chart's line as sub-paths of (x, y): one per run of consecutive readings."""
    d = page.locator("#chart path.line").get_attribute("d") or ""
    runs = []
    for cmd, xs, ys in re.findall(r"([ML])(-?[\d.]+) (-?[\d.]+)", d):
        if cmd == "M":
            runs.append([])
        runs[-1].append((float(xs), float(ys)))
    return runs


# -- tests --------------------------------------------------------------------------------------------
def test_login_is_required(open_page, stack):
    from playwright.sync_api import Error
    page, watch = open_page(credentials=False, go=False)
    # The gateway answers 401 with a Basic challenge; a browser with no login to give gets nothing.
    with pytest.raises(Error, match="ERR_INVALID_AUTH_CREDENTIALS"):
        page.goto(stack.url + "/")
    assert page.locator("#demand-value").count() == 0
    assert watch.requests and not watch.foreign()


def test_shows_the_meters_demand_and_follows_the_load(open_page, stack):
    from playwright.sync_api import expect
    page, watch = open_page()
    expect(page.locator("#state")).to_have_text("Meter connected")
    expect(page.locator("#state")).to_have_attribute("data-level", "ok")
    expect(page.locator("#banner")).to_be_hidden()

    # The emulator's constant load, through meter scaling, HAN, channel, LAN and the page.
    _wait(lambda: _demand_kw(page) is not None, WAIT_S, "a demand value on the page")
    shown = _demand_kw(page)
    assert abs(shown - LOAD_W / 1000) <= DEMAND_TOL_KW, shown
    assert abs(shown - _current(stack)["demand_w"] / 1000) <= DEMAND_TOL_KW
    expect(page.locator("#direction")).to_have_text("Drawing from the grid")
    expect(page.locator("#updated")).to_have_text(re.compile(r"^Updated \d+ s ago \(\d\d:\d\d:\d\d\)$"))
    # The status in plain words; the meter's identity and the counters are one tap away.
    meter = stack.get_json("/api/v1/status")[1]["meter"]
    expect(page.locator("#st-meter")).to_have_text("Meter connected")
    expect(page.locator("#st-lost")).to_have_text(re.compile(r"^\d+(\.\d)? % \([\d,]+ of [\d,]+ readings\)$"))
    card = page.locator("section.status").inner_text()          # what a household sees at first
    assert not re.search(r"IEEE|HAN|LAN|endpoint|0x[0-9A-F]|channel|quer", card), card
    expect(page.locator("#st-identity")).to_be_hidden()
    page.locator("#st-more summary").click()
    expect(page.locator("#st-identity")).to_be_visible()
    expect(page.locator("#st-identity")).to_have_text(
        f"IEEE {meter['ieee']}, address {meter['nwk_hex']}, endpoint {meter['endpoint']}")
    expect(page.locator("#st-queries")).to_have_text(re.compile(r"^[\d,]+ sent, [\d,]+ lost"))
    page.locator("#st-more summary").click()
    expect(page.locator("#st-identity")).to_be_hidden()

    # The register total and "energy used today" agree with the JSON the page reads, within what
    # the meter counts between the two reads.
    before = _current(stack)["summation_wh"]
    total = _number(page.locator("#total-value").inner_text())
    after = _current(stack)["summation_wh"]
    assert before / 1000 - 0.01 <= total <= after / 1000 + 0.01, (before, total, after)

    midnight, first = _first_today(stack, "summation_wh")
    first_time = datetime.fromisoformat(first["time"].replace("Z", "+00:00")).astimezone()
    # The emulated meter measures export (CurrentSummationReceived): the register is named "Imported".
    label = page.locator("#today-label").inner_text()
    if (first_time - midnight).total_seconds() > 60:
        assert label == f"Imported since {first_time:%H:%M}", label
    else:
        assert label == "Imported today", label
    expect(page.locator("#total-label")).to_have_text("Imported, meter total")
    before = _current(stack)["summation_wh"]
    today = _number(page.locator("#today-value").inner_text())
    after = _current(stack)["summation_wh"]
    assert (before - first["summation_wh"]) / 1000 - 0.002 <= today <= (after - first["summation_wh"]) / 1000 + 0.002

    # The emulated home starts exporting: the page follows without a reload.
    out_before = _current(stack)["received_wh"]
    stack.set_load_w(-3600)
    _wait(lambda: (_demand_kw(page) or 0) < 0, WAIT_S, "the page to show the export")
    assert abs(_demand_kw(page) - (-3.6)) <= DEMAND_TOL_KW
    assert page.locator("#demand-value").inner_text().startswith("\u2212")      # a real minus sign
    expect(page.locator("#direction")).to_have_text("Exporting to the grid")
    # Import and export apart: the received register counts 1 Wh a second now, the delivered one stands.
    _wait(lambda: _current(stack)["received_wh"] >= out_before + 3, WAIT_S, "3 Wh exported")
    expect(page.locator("#today-export-value")).to_be_visible()
    expect(page.locator("#total-export-value")).to_be_visible()
    before = _current(stack)
    total_out = _number(page.locator("#total-export-value").inner_text())
    today_out = _number(page.locator("#today-export-value").inner_text())
    today_in = _number(page.locator("#today-value").inner_text())
    after = _current(stack)
    assert before["received_wh"] / 1000 - 0.01 <= total_out <= after["received_wh"] / 1000 + 0.01
    first_out = _first_today(stack, "received_wh")[1]
    assert ((before["received_wh"] - first_out["received_wh"]) / 1000 - 0.002 <= today_out
            <= (after["received_wh"] - first_out["received_wh"]) / 1000 + 0.002)
    assert today_out > 0
    assert (before["summation_wh"] - first["summation_wh"]) / 1000 - 0.002 <= today_in \
        <= (after["summation_wh"] - first["summation_wh"]) / 1000 + 0.002
    expect(page.locator("#today-export-label")).to_have_text(re.compile(r"^Exported (today|since \d\d:\d\d)$"))

    stack.set_load_w(2300)
    _wait(lambda: abs((_demand_kw(page) or 0) - 2.3) <= DEMAND_TOL_KW, WAIT_S, "the page to show 2.30 kW")
    expect(page.locator("#direction")).to_have_text("Drawing from the grid")
    # The chart draws the readings it fetched (export included: the axis goes below zero).
    page.wait_for_function("() => Number(document.getElementById('chart').dataset.points) > 3")
    # The stack is younger than the hour shown: the time axis starts at the first reading held.
    hist = stack.get_json("/api/v1/history?minutes=60")[1]
    held = min([p["time"] for p in hist["points"]] + [g["due"] for g in hist["gaps"]])
    assert page.locator("#chart").get_attribute("data-start") == held
    watch.check()


def test_stale_banner_when_the_han_process_stops_and_recovery(open_page, stack):
    from playwright.sync_api import expect
    page, watch = open_page()
    expect(page.locator("#state")).to_have_text("Meter connected")
    kept = page.locator("#demand-value").inner_text()

    stack.stop_han()
    try:
        banner = page.locator("#banner")
        expect(banner).to_be_visible()
        expect(banner).to_have_text(re.compile(r"Stale data|No word from the meter reader"))
        # Twice the staleness limit without any message: the HAN side is silent.
        expect(banner).to_have_text(re.compile(r"^No word from the meter reader \(HAN process\)"))
        expect(banner).to_have_attribute("data-level", "bad")
        expect(page.locator("#state")).to_have_text("Meter reader silent")
        expect(page.locator("#st-han")).to_have_text(re.compile(r"^Silent for \d+ s$"))
        expect(page.locator("#st-meter")).to_have_text("Unknown (the meter reader is silent)")
        expect(page.locator("#updated")).to_have_attribute("data-stale", "true")
        assert page.locator("#demand-value").inner_text() == kept       # the last values stay
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "laptop-han-silent.png"), animations="disabled")
    finally:
        stack.start_han()

    expect(page.locator("#state")).to_have_text("Meter connected", timeout=30_000)
    expect(page.locator("#banner")).to_be_hidden()
    expect(page.locator("#updated")).not_to_have_attribute("data-stale", "true")
    watch.check()


def test_unreachable_meter_and_the_gap_it_leaves(open_page, stack):
    from playwright.sync_api import expect
    page, watch = open_page()
    expect(page.locator("#state")).to_have_text("Meter connected")

    stack.signal_emulator(signal.SIGUSR2)          # meter power off
    powered = False
    try:
        expect(page.locator("#state")).to_have_text("Meter unreachable")
        expect(page.locator("#state")).to_have_attribute("data-level", "bad")
        expect(page.locator("#banner")).to_have_text(re.compile(r"^Meter unreachable\. The meter does not answer"))
        expect(page.locator("#st-lost")).not_to_have_text(re.compile(r"^0 %"))
        # The lost slots reach the chart as gaps (the history is re-read every few seconds).
        page.wait_for_function("() => Number(document.getElementById('chart').dataset.gaps) > 0")
        stack.signal_emulator(signal.SIGUSR2)      # power back on
        powered = True
    finally:
        if not powered:
            stack.signal_emulator(signal.SIGUSR2)

    expect(page.locator("#state")).to_have_text("Meter connected")
    expect(page.locator("#banner")).to_be_hidden()

    # Readings after the outage reach the chart: then the line must be broken at every gap, never
    # drawn across one.
    status, hist = stack.get_json("/api/v1/history?minutes=60")
    last_gap = max(g["slot"] for g in hist["gaps"])
    _wait(lambda: page.locator(f"#chart rect.gap[data-slot='{last_gap}']").count() == 1
          and len(_chart_lines(page)) >= 2 and _runs_after_gap(page, last_gap),
          WAIT_S, "the line to resume after the gap")
    runs = _chart_lines(page)
    for rect in page.locator("#chart rect.gap").all():
        mid = float(rect.get_attribute("x")) + float(rect.get_attribute("width")) / 2
        for run in runs:
            for (x1, _), (x2, _) in zip(run, run[1:]):
                assert not (x1 < mid < x2), f"a line is drawn across the gap at x={mid:.1f}"
    watch.check()


def _runs_after_gap(page, slot: int) -> bool:
    """True when some run of the line starts to the right of the gap band for `slot`."""
    rect = page.locator(f"#chart rect.gap[data-slot='{slot}']")
    if rect.count() != 1:
        return False
    right = float(rect.get_attribute("x")) + float(rect.get_attribute("width"))
    return any(run[0][0] >= right - 0.5 for run in _chart_lines(page))


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_screenshots_phone_and_tv(open_page, stack, scheme):
    from playwright.sync_api import expect
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for name, size in (("phone", {"width": 390, "height": 844}), ("tv", {"width": 1920, "height": 1080})):
        page, watch = open_page(viewport=size, color_scheme=scheme)
        expect(page.locator("#state")).to_have_text("Meter connected")
        expect(page.locator("#banner")).to_be_hidden()
        page.wait_for_function("() => Number(document.getElementById('chart').dataset.points) > 3")
        expect(page.locator("#download")).to_have_attribute("href", re.compile(r"^/espi/1_1/"))
        # Nothing may stick out sideways, on a phone least of all.
        overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{name}: the page is {overflow} px wider than the screen"
        low = page.evaluate(CONTRAST_JS, CONTRAST_SELECTORS)
        assert not low, f"{name} {scheme}: text below WCAG AA contrast 4.5:1: {low}"
        page.screenshot(path=str(SCREENSHOTS / f"{name}-{scheme}.png"), animations="disabled")
        watch.check()


def test_fits_a_320px_phone(open_page, stack):
    from playwright.sync_api import expect
    page, watch = open_page(viewport={"width": 320, "height": 640})
    expect(page.locator("#state")).to_have_text("Meter connected")
    _wait(lambda: _demand_kw(page) is not None, WAIT_S, "a demand value")
    clipped = page.evaluate("""() => [...document.querySelectorAll('body *')]
        .filter(el => el.getClientRects().length && !el.classList.contains('visually-hidden')
                      && el.scrollWidth > el.clientWidth + 1
                      && getComputedStyle(el).overflowX !== 'visible')
        .map(el => el.id || el.className)""")
    assert not clipped, f"clipped content at 320 px: {clipped}"
    overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow} px wider than a 320 px screen"
    box = page.locator("#demand-value").bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= 320
    watch.check()


def test_keyboard_reaches_the_range_switch_and_the_download(open_page, stack, tmp_path):
    from playwright.sync_api import expect
    page, watch = open_page()
    download = page.locator("#download")
    expect(download).to_have_attribute(
        "href", f"/espi/1_1/resource/Batch/Subscription/{stack.subscription}?download=1")

    def focus_ring() -> tuple[str, str, float]:
        return page.evaluate("""() => {
            const el = document.activeElement, cs = getComputedStyle(el);
            return [el.id, cs.outlineStyle, parseFloat(cs.outlineWidth)];
        }""")

    seen = []
    for _ in range(12):
        page.keyboard.press("Tab")
        element, style, width = focus_ring()
        seen.append(element)
        if element in ("range-60", "range-1440", "download"):
            assert style != "none" and width >= 2, f"#{element} has no visible focus ({style} {width}px)"
        if element == "range-1440":
            page.keyboard.press("Enter")
            expect(page.locator("#range-1440")).to_have_attribute("aria-pressed", "true")
            expect(page.locator("#range-60")).to_have_attribute("aria-pressed", "false")
            expect(page.locator("#chart-title")).to_have_text(re.compile(r"24 hours|all history held"))
        if element == "download":
            break
    assert "range-60" in seen and "range-1440" in seen and seen[-1] == "download", seen

    with page.expect_download() as info:
        page.keyboard.press("Enter")
    saved = tmp_path / info.value.suggested_filename
    info.value.save_as(saved)
    assert saved.name.endswith(".xml")
    feed = saved.read_text()
    assert "<feed" in feed and "http://naesb.org/espi" in feed, feed[:300]
    assert stack.subscription in feed
    watch.check()


def test_network_and_http_errors_keep_the_last_values(open_page, stack):
    from playwright.sync_api import expect
    page, watch = open_page()
    expect(page.locator("#state")).to_have_text("Meter connected")
    _wait(lambda: _demand_kw(page) is not None, WAIT_S, "a demand value")
    kept = page.locator("#demand-value").inner_text()

    # The device loses the network: last values stay, the banner says why, the page comes back alone.
    page.context.set_offline(True)
    expect(page.locator("#banner")).to_have_text(re.compile(r"^The gateway is not answering since"))
    expect(page.locator("#state")).to_have_text("Gateway not answering")
    assert page.locator("#demand-value").inner_text() == kept
    page.context.set_offline(False)
    expect(page.locator("#banner")).to_be_hidden()
    expect(page.locator("#state")).to_have_text("Meter connected")

    # The login stops working (401) and a server error (500): said plainly, then recovered.
    for status, banner in ((401, r"^The gateway refused the login"), (500, r"^The gateway is not answering \(HTTP 500\)")):
        page.route("**/api/v1/current", _answer(status))
        expect(page.locator("#banner")).to_have_text(re.compile(banner))
        assert page.locator("#demand-value").inner_text() != "\u2013"
        page.unroute("**/api/v1/current")
        expect(page.locator("#banner")).to_be_hidden()
    # Chromium itself logs each failed request ("Failed to load resource: ..."); nothing else may appear.
    assert not watch.page_errors, watch.page_errors
    errors = [m for m in watch.console_errors
              if not (NETWORK_FAILURE.match(m) or re.match(r"^Failed to load resource: the server "
                                                          r"responded with a status of (401|500)", m))]
    assert not errors, errors
    assert not watch.foreign(), watch.foreign()


def test_a_meter_without_export_shows_energy_used_and_no_export(open_page, stack):
    """A meter that does not report CurrentSummationReceived (received_wh null): the page keeps to
    "energy used" and the register total, and shows no export figures."""
    from playwright.sync_api import expect
    page, watch = open_page(go=False)

    def without_export(route, request):
        body = _current(stack)           # the gateway's own answer, fetched with the test's trust
        body["received_wh"] = None
        route.fulfill(status=200, json=body, headers={"Cache-Control": "no-store"})
    page.route("**/api/v1/current", without_export)
    page.goto(stack.url + "/", wait_until="load")
    expect(page.locator("#state")).to_have_text("Meter connected")
    _wait(lambda: _demand_kw(page) is not None, WAIT_S, "a demand value")
    expect(page.locator("#today-label")).to_have_text(re.compile(r"^Energy used (today|since \d\d:\d\d)$"))
    expect(page.locator("#total-label")).to_have_text("Meter register (total)")
    expect(page.locator("#today-export-value")).to_be_hidden()
    expect(page.locator("#total-export-value")).to_be_hidden()
    # ... and shows them as soon as the meter reports export
    page.unroute("**/api/v1/current")
    expect(page.locator("#total-export-value")).to_be_visible()
    expect(page.locator("#today-label")).to_have_text(re.compile(r"^Imported (today|since \d\d:\d\d)$"))
    watch.check()


def _answer(status: int):
    def handler(route, request):
        route.fulfill(status=status, content_type="text/plain", body="no\n")
    return handler


def test_survives_the_server_restarting(open_page, stack):
    from playwright.sync_api import expect
    page, watch = open_page()
    expect(page.locator("#state")).to_have_text("Meter connected")
    stack.stop_lan()
    try:
        expect(page.locator("#banner")).to_have_text(re.compile(r"^The gateway is not answering since"))
        expect(page.locator("#updated")).to_have_attribute("data-stale", "true")
    finally:
        stack.start_lan()
    expect(page.locator("#state")).to_have_text("Meter connected")
    expect(page.locator("#banner")).to_be_hidden()
    _wait(lambda: abs((_demand_kw(page) or 0) - _current(stack)["demand_w"] / 1000) <= DEMAND_TOL_KW,
          WAIT_S, "the demand after the restart")
    watch.check(allow_network_failures=True)


# Before the page's own script: keep every answer the page fetches (URL and body) for the test to read.
RECORD_FETCHES_JS = """
window.__fetched = [];
const pageFetch = window.fetch;
window.fetch = function (url, options) {
  return pageFetch.call(window, url, options).then(function (resp) {
    resp.clone().text().then(function (body) { window.__fetched.push([String(url), body]); });
    return resp;
  });
};
"""


def test_fetches_only_what_is_new_in_both_ranges(open_page, stack):
    """Issue 16: after the first load the page asks for history `after=` the newest entry it holds
    (per-minute buckets for the 24 hours), the status only every 30 s while the readings flow, and
    for the midnight baseline of both registers once; a register that goes back does not start a search
    loop."""
    from playwright.sync_api import expect
    # The HAN reports its status every 30 s; until it has (after the LAN restarted in the test before)
    # the page rightly asks for the status on every tick, which is not what is judged here.
    _wait(lambda: stack.get_json("/api/v1/status")[1].get("state") == "polling", 30 + WAIT_S,
          "the HAN's status report")
    # Export before the page opens, so that "exported today" counted from the page's own first reading
    # (rather than from the first one since midnight in history) would show less.
    out_before = _current(stack)["received_wh"]
    stack.set_load_w(-3600)
    _wait(lambda: _current(stack)["received_wh"] >= out_before + 3, WAIT_S, "3 Wh exported")
    stack.set_load_w(LOAD_W)
    page, watch = open_page(go=False)
    page.add_init_script(RECORD_FETCHES_JS)
    page.goto(stack.url + "/", wait_until="load")
    expect(page.locator("#state")).to_have_text("Meter connected")

    def seen() -> list[tuple[str, str]]:
        """(path and query, body) of every answer the page fetched, in order."""
        return [(u if u.startswith("/") else u[len(stack.url):], body)
                for u, body in page.evaluate("() => window.__fetched")]

    def count(prefix: str) -> int:
        return sum(1 for url, _ in seen() if url.startswith(prefix))

    def hour() -> list[tuple[str, str]]:
        return [(u, b) for u, b in seen() if u.startswith("/api/v1/history?minutes=60")]

    # The hour is refreshed every tick, but not more often than every 5 s (this stack polls every 0.5 s).
    _wait(lambda: len(hour()) >= 4, 4 * 5 + WAIT_S, "four rounds of the hour's history")
    first, *later = hour()
    assert "after=" not in first[0] and all("after=" in u for u, _ in later), hour()
    # Each later answer holds only readings newer than every one fetched before: none comes twice.
    held: list[str] = []
    for _, body in [first, *later]:
        times = [p["time"] for p in json.loads(body)["points"]]
        assert all(t > max(held, default="") for t in times), (held[-3:], times)
        held += times
    assert len(held) >= 10
    # While every tick brings a new reading the status is not fetched on every tick (every 30 s; on a
    # tick without a new reading it is, so this is judged only when the readings kept coming).
    times = [json.loads(b)["time"] for u, b in seen() if u == "/api/v1/current"]
    if len(times) >= 4 and len(set(times)) == len(times):
        assert count("/api/v1/status") <= len(times) // 2 + 1, seen()
    # The midnight baseline of both registers (imported and exported today) was searched for once,
    # and both count from the first reading since midnight in history.
    assert count("/api/v1/history?minutes=1440&limit=1&after=") == 1, seen()
    first_out = _first_today(stack, "received_wh")[1]
    exported = (_current(stack)["received_wh"] - first_out["received_wh"]) / 1000
    assert exported >= 0.003

    def shows_exported() -> bool:
        text = page.locator("#today-export-value").inner_text()            # "\u2013" until known
        return text != "\u2013" and abs(_number(text) - exported) <= 0.0015
    _wait(shows_exported, WAIT_S, f"exported today to show {exported:.3f} kWh")
    suffix = page.locator("#today-label").inner_text().removeprefix("Imported")
    expect(page.locator("#today-export-label")).to_have_text("Exported" + suffix)

    def day() -> list[str]:
        return [u for u, _ in seen() if u.startswith("/api/v1/history?minutes=1440&step=60")]

    page.locator("#range-1440").click()
    _wait(lambda: len(day()) == 1, WAIT_S, "the 24 hours, per minute")
    assert "after=" not in day()[0]
    page.wait_for_function("() => Number(document.getElementById('chart').dataset.points) > 0")
    page.locator("#range-60").click()
    page.locator("#range-1440").click()             # back again: only the minutes since
    _wait(lambda: len(day()) == 2, WAIT_S, "the 24 hours again")
    assert "after=" in day()[1], day()

    # Both registers go back (a new meter): "imported today" and "exported today" count from that
    # reading, and the page does not go looking for a baseline again.
    body = _current(stack)
    assert body["received_wh"] is not None                          # the emulated meter measures export
    body["summation_wh"] = body["received_wh"] = 1
    page.route("**/api/v1/current", lambda route, req: route.fulfill(
        status=200, content_type="application/json", body=json.dumps(body)))
    expect(page.locator("#today-label")).to_have_text(re.compile(r"^Imported since \d\d:\d\d$"))
    expect(page.locator("#today-value")).to_have_text("0.000")
    expect(page.locator("#today-export-label")).to_have_text(re.compile(r"^Exported since \d\d:\d\d$"))
    expect(page.locator("#today-export-value")).to_have_text("0.000")
    rounds = count("/api/v1/current")
    _wait(lambda: count("/api/v1/current") >= rounds + 5, WAIT_S, "five more rounds")
    assert count("/api/v1/history?minutes=1440&limit=1&after=") == 1, seen()
    page.unroute("**/api/v1/current")
    watch.check()
def test_history_health_is_shown(open_page, stack):
    """The status section says whether history is kept; a disk that refuses it (here the real status
    answer with the history part a read-only disk gives, tests/system/test_history_disk.py) is said plainly."""
    from playwright.sync_api import expect
    page, watch = open_page()
    expect(page.locator("#st-history")).to_have_text(re.compile(r"^Saved on the gateway \(35 days\), [\d,]+ readings$"))
    expect(page.locator("#st-history")).to_have_attribute("data-level", "ok")

    def history(health: str, problem: str):
        body = stack.get_json("/api/v1/status")[1]
        body["history"] = {**body["history"], "health": health, "problem": problem,
                           "problem_since": body["time"], "queued": 4}

        def handler(route, request):
            route.fulfill(status=200, json=body, headers={"Cache-Control": "no-store"})
        return handler

    page.route("**/api/v1/status", history("unavailable", "/s/history.sqlite3: cannot open the history store: "
                                                          "unable to open database file (SQLITE_CANTOPEN); "
                                                          "/s is on a read-only file system"))
    page.reload(wait_until="load")          # the page asks for the status every 30 s while readings flow
    expect(page.locator("#st-history")).to_have_text(re.compile(
        r"^Off \u2014 the gateway cannot open its history: .* read-only file system \(since \d\d:\d\d:\d\d\)\. "
        r"Charts and downloads show only recent readings; it keeps trying\.$"))
    expect(page.locator("#st-history")).to_have_attribute("data-level", "bad")
    page.unroute("**/api/v1/status")
    page.route("**/api/v1/status", history("failing", "the file system holding /s/history.sqlite3 is full"))
    page.reload(wait_until="load")
    expect(page.locator("#st-history")).to_have_text(re.compile(
        r"^Not being saved: the file system holding /s/history.sqlite3 is full \(since \d\d:\d\d:\d\d\); "
        r"4 new reading\(s\) wait in memory and it keeps trying\.$"))
    expect(page.locator("#st-history")).to_have_attribute("data-level", "warn")
    page.unroute("**/api/v1/status")
    page.reload(wait_until="load")
    expect(page.locator("#st-history")).to_have_text(re.compile(r"^Saved on the gateway"))
    assert not watch.page_errors, watch.page_errors
