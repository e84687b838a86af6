/* OpenSEG in-home display.
 *
 * Plain JavaScript, no build step, no dependency, and no request outside the gateway: everything it
 * shows comes from the same-origin JSON endpoints, fetched with the browser's own Basic-auth login.
 *
 *   tick() every poll interval:  /api/v1/current                  -> numbers
 *                                /api/v1/status (every 30 s, and every tick while the readings
 *                                  stop or anything is wrong)      -> state, banner, status panel
 *                                /api/v1/history?after=...         -> only what is new for the chart
 *                                  (every tick for the hour, every minute for the 24 hours, which
 *                                  are fetched as per-minute lowest/highest demand)
 *                                the first reading after midnight  -> "energy used today" (with
 *                                  export: imported and exported today), once a day
 *   a 1-second clock             -> "updated N s ago"
 *
 * Failures (network, 401, 503, a bad body) never reach the console: the page keeps the last values,
 * says what is wrong in the banner and retries with a growing delay, so it survives the server
 * restarting. The chart draws only what the meter said: a missed slot is a hole, never a line.
 */
(function () {
  "use strict";

  var API_CURRENT = "/api/v1/current";
  var API_STATUS = "/api/v1/status";
  var API_WHOAMI = "/api/v1/whoami";
  var API_HISTORY = "/api/v1/history?minutes=";
  var DAY_STEP_S = 60;            // the 24-hour chart: one lowest/highest demand per minute
  var STATUS_EVERY_S = 30;        // the status while all is well (the readings say so every tick)
  var FETCH_TIMEOUT_MS = 10000;
  var MIN_REFRESH_S = 1;          // never poll the gateway faster than this, whatever the meter does
  var MAX_REFRESH_S = 30;
  var MAX_BACKOFF_S = 15;         // a display on a LAN may keep trying this often while the gateway is away

  var STATES = {
    "polling": ["ok", "Meter connected"],
    "meter-unreachable": ["bad", "Meter unreachable"],
    "meter-address-mismatch": ["bad", "Meter at an unexpected address"],
    "radio-down": ["bad", "Radio down"],
    "joining": ["warn", "Radio joining the meter network"],
    "discovering": ["warn", "Looking for the meter"]
  };
  var STATE_HELP = {
    "meter-unreachable": "The meter does not answer the radio. It may be powered off or out of range.",
    "meter-address-mismatch": "A meter answers, but not from the network's coordinator (0x0000), where the utility's meter is; the gateway does not read it and keeps looking. openseg-han --check names the address that answered.",
    "radio-down": "The gateway's ZigBee radio is not responding.",
    "joining": "The radio is joining the meter's network.",
    "discovering": "The radio is looking for the meter on its network."
  };

  var $ = function (id) { return document.getElementById(id); };
  var ui = {};

  var S = {
    pollS: null,            // the HAN's poll interval, from /api/v1/status
    range: 60,              // minutes shown in the chart
    current: null,          // last good /api/v1/current body
    currentAt: 0,           // performance.now() when it arrived
    noData: false,          // the gateway answered "no meter value yet"
    status: null,
    statusAt: 0,
    skewMs: 0,              // gateway clock minus this device's clock
    history: {},            // minutes -> {points, gaps, at, newest, stepS}: what the chart holds
    baseline: null,         // {day, time, wh, exact}: the first summation at/after local midnight
    baselineOut: null,      // the same for the received register (energy exported)
    baselineTried: 0,       // performance.now() of the last search for them
    stalled: false,         // the last tick brought no new reading (or not an ok one)
    failures: 0,            // consecutive failed rounds
    error: null,            // what the last failed round ran into
    downSince: null,        // Date.now() when the gateway stopped answering
    nextTry: 0,             // Date.now() of the next attempt while failing
    timer: null,
    inFlight: false,
    subscription: null,
    whoamiTried: false
  };

  // ---- fetching -------------------------------------------------------------------------------

  function FetchError(kind, status, retryAfterS) {
    this.kind = kind;                 // "network", "timeout", "auth", "http", "no-data", "body"
    this.status = status || 0;
    this.retryAfterS = retryAfterS || 0;
  }

  function parseRetryAfter(value) {
    if (!value) { return 0; }
    var n = Number(value);
    if (isFinite(n) && n >= 0) { return n; }
    var t = Date.parse(value);
    return isNaN(t) ? 0 : Math.max(0, (t - Date.now()) / 1000);
  }

  /* Resolves to the parsed JSON body or rejects with a FetchError; never anything else. */
  function getJSON(path) {
    var ctl = typeof AbortController === "function" ? new AbortController() : null;
    var timer = setTimeout(function () { if (ctl) { ctl.abort(); } }, FETCH_TIMEOUT_MS);
    return fetch(path, {
      method: "GET",
      cache: "no-store",
      credentials: "same-origin",
      redirect: "error",
      headers: { "Accept": "application/json" },
      signal: ctl ? ctl.signal : undefined
    }).then(function (resp) {
      if (resp.status === 401 || resp.status === 403) {
        throw new FetchError("auth", resp.status);
      }
      if (resp.status === 503) {
        throw new FetchError("no-data", 503, parseRetryAfter(resp.headers.get("Retry-After")));
      }
      if (!resp.ok) {
        throw new FetchError("http", resp.status, parseRetryAfter(resp.headers.get("Retry-After")));
      }
      return resp.json().catch(function () { throw new FetchError("body", resp.status); });
    }, function (err) {
      throw new FetchError(err && err.name === "AbortError" ? "timeout" : "network");
    }).then(function (body) {
      clearTimeout(timer);
      if (body === null || typeof body !== "object") { throw new FetchError("body", 200); }
      return body;
    }, function (err) {
      clearTimeout(timer);
      throw err instanceof FetchError ? err : new FetchError("network");
    });
  }

  function settle(promise) {
    return promise.then(function (value) { return { ok: true, value: value }; },
                        function (error) { return { ok: false, error: error }; });
  }

  // ---- the loop -------------------------------------------------------------------------------

  function refreshS() {
    var p = S.pollS || 7;
    return Math.min(MAX_REFRESH_S, Math.max(MIN_REFRESH_S, p));
  }

  function schedule(delayS) {
    if (S.timer !== null) { clearTimeout(S.timer); }
    S.nextTry = Date.now() + delayS * 1000;
    S.timer = setTimeout(tick, Math.max(0, delayS * 1000));
  }

  function tick() {
    S.timer = null;
    if (S.inFlight) { return; }
    S.inFlight = true;
    var lastTime = S.current ? S.current.time : null;
    var wantStatus = statusDue(lastTime);
    Promise.all([settle(getJSON(API_CURRENT)),
                 wantStatus ? settle(getJSON(API_STATUS)) : { ok: true, value: null }]).then(function (r) {
      var now = performance.now();
      var cur = r[0], st = r[1];
      if (st.ok && st.value !== null) {
        S.status = st.value;
        S.statusAt = now;
        var p = num(st.value.poll_interval_s);
        if (p !== null && p > 0) { S.pollS = p; }
      }
      if (cur.ok) {
        S.current = cur.value;
        S.currentAt = now;
        S.noData = cur.value.status === "no-data";
        var t = parseTime(cur.value.time), age = num(cur.value.age_s);
        if (t !== null && age !== null) { S.skewMs = t + age * 1000 - Date.now(); }
      } else if (cur.error.kind === "no-data") {
        S.noData = true;
      }
      // A 503 "no meter value yet" is an answer, not a failure to reach the gateway.
      var hard = null;
      [cur, st].forEach(function (x) {
        if (!x.ok && x.error.kind !== "no-data" && !hard) { hard = x.error; }
      });
      if (hard) {
        S.failures += 1;
        S.error = hard;
        if (S.downSince === null) { S.downSince = Date.now(); }
        return null;
      }
      S.failures = 0;
      S.error = null;
      S.downSince = null;
      if (statusDue(lastTime, cur.ok ? cur.value : null) && !wantStatus) {
        // The readings stopped or went wrong on this tick: fetch the status now, not in 30 s.
        return settle(getJSON(API_STATUS)).then(function (res) {
          if (res.ok) { S.status = res.value; S.statusAt = performance.now(); }
          return refreshHistory(false).then(whoami);
        });
      }
      return refreshHistory(false).then(whoami);
    }).then(function () {
      S.inFlight = false;
      render();
      schedule(nextDelayS());
    }).catch(function (err) {
      // Only a bug in this file gets here; say so once and keep the page alive.
      S.inFlight = false;
      if (window.console) { console.error("openseg page:", err); }
      schedule(MAX_BACKOFF_S);
    });
  }

  function nextDelayS() {
    if (!S.failures) {
      var d = refreshS();
      if (S.noData && S.error === null) { d = Math.max(d, 2); }
      return d;
    }
    var back = Math.min(MAX_BACKOFF_S, refreshS() * Math.pow(1.6, S.failures - 1));
    back *= 0.85 + Math.random() * 0.3;                       // spread a houseful of displays
    return Math.max(back, Math.min(300, S.error ? S.error.retryAfterS : 0));
  }

  /* The status is fetched every STATUS_EVERY_S while all is well, and on every tick while it is not:
   * no status yet, the last one not healthy, the current value not ok, or no new reading since the
   * previous tick (the HAN side may have stopped or lost the meter). */
  function statusDue(lastTime, cur) {
    var st = S.status;
    if (!st || performance.now() - S.statusAt >= STATUS_EVERY_S * 1000 - 100) { return true; }
    if (st.state !== "polling" || st.han_silent === true || st.data_status !== "ok") { return true; }
    if (cur === undefined) { return S.stalled; }                 // before this tick's fetch
    S.stalled = !cur || cur.status !== "ok" || cur.time === lastTime;
    return S.stalled;
  }

  function historyEveryS(minutes) {
    return minutes === 60 ? Math.max(5, refreshS()) : Math.max(DAY_STEP_S, refreshS());
  }

  function historyURL(minutes, h) {
    var url = API_HISTORY + minutes + (minutes > 60 ? "&step=" + DAY_STEP_S : "");
    return h && h.newest ? url + "&after=" + encodeURIComponent(h.newest) : url;
  }

  /* The chart's range, fetched once and then only what is new (`after=`): the readings, or for the
   * 24 hours the per-minute buckets from the last one held (it may have been incomplete) on. */
  function refreshHistory(force) {
    var now = performance.now();
    var m = S.range;
    var h = S.history[m];
    var jobs = [findBaseline()];
    if (force || !h || now - h.at >= historyEveryS(m) * 1000 - 100) {
      var incremental = !!(h && h.newest);
      jobs.push(settle(getJSON(historyURL(m, h))).then(function (res) {
        if (res.ok) {
          S.history[m] = mergeHistory(incremental ? S.history[m] : null, normaliseHistory(res.value, m));
        } else if (S.history[m]) {
          S.history[m].at = performance.now();               // keep what we have; try again later
        }
      }));
    }
    return Promise.all(jobs);
  }

  /* New entries after the old ones; a bucket that comes again replaces the one held; what has
   * left the range is dropped. When the gateway's clock is now before the newest entry held (it was
   * set back), nothing is kept and the next round fetches the range afresh. */
  function mergeHistory(old, fresh) {
    if (!old) { return fresh; }
    if (fresh.toMs !== null && old.newestMs !== null && fresh.toMs < old.newestMs) { return null; }
    var keep = function (list) {
      return list.filter(function (e) { return e.t < fresh.from && e.t >= fresh.since; });
    };
    var merged = {
      points: keep(old.points).concat(fresh.points),
      gaps: keep(old.gaps).concat(fresh.gaps),
      minutes: fresh.minutes, intervalS: fresh.intervalS, stepS: fresh.stepS, at: fresh.at,
      newest: fresh.newest !== null ? fresh.newest : old.newest,
      newestMs: fresh.newest !== null ? fresh.newestMs : old.newestMs
    };
    return merged;
  }

  function whoami() {
    if (S.subscription || S.whoamiTried) { return null; }
    S.whoamiTried = true;
    return settle(getJSON(API_WHOAMI)).then(function (res) {
      if (res.ok && typeof res.value.subscription === "string") {
        S.subscription = res.value.subscription;
      }
    });
  }

  /* A bucket (step_s set) becomes two chart points, its lowest demand at its start and its highest
   * half a step later, so the line spans the bucket's range; its gaps sit mid-bucket. `newest` is
   * what the next `after=` asks from: the newest reading's or gap's time, or for buckets the start of
   * the last one less a millisecond, so that bucket comes again complete. */
  function normaliseHistory(body, minutes) {
    var points = [], gaps = [], newest = null;
    var step = num(body.step_s);
    var later = function (iso, t) { if (newest === null || t > newest.t) { newest = { t: t, iso: iso }; } };
    (Array.isArray(body.points) ? body.points : []).forEach(function (p) {
      var t = parseTime(p.time);
      if (t === null) { return; }
      later(p.time, t);
      if (step) {
        var n = num(p.readings) || 0;
        points.push({ t: t, slot: null, w: num(p.demand_min_w), wh: num(p.summation_wh), n: n });
        points.push({ t: t + step * 500, slot: null, w: num(p.demand_max_w), wh: num(p.summation_wh), n: 0 });
      } else {
        points.push({ t: t, slot: num(p.slot), w: num(p.demand_w), wh: num(p.summation_wh), n: 1 });
      }
    });
    (Array.isArray(body.gaps) ? body.gaps : []).forEach(function (g) {
      var iso = g.due !== undefined ? g.due : g.time;
      var t = parseTime(iso);
      if (t === null) { return; }
      later(iso, t);
      gaps.push({ t: step ? t + step * 500 : t, slot: num(g.slot), cause: String(g.cause || ""),
                  missed: num(g.missed) || 1 });
    });
    points.sort(function (a, b) { return a.t - b.t; });
    gaps.sort(function (a, b) { return a.t - b.t; });
    var from = points.length ? points[0].t : Infinity;
    if (gaps.length) { from = Math.min(from, step ? gaps[0].t - step * 500 : gaps[0].t); }
    if (step && newest !== null) { newest = { t: newest.t - 1, iso: new Date(newest.t - 1).toISOString() }; }
    var toMs = parseTime(body.to);
    return { points: points, gaps: gaps, minutes: minutes, stepS: step,
             intervalS: step || num(body.poll_interval_s), at: performance.now(),
             from: from, since: toMs === null ? -Infinity : toMs - minutes * 60000, toMs: toMs,
             newest: newest ? newest.iso : null, newestMs: newest ? newest.t : null };
  }

  /* "Energy used today" (or "imported today") and "exported today": each register's value in the
   * first reading at or after local midnight that history holds, asked for once a day (`after=`
   * midnight, `limit=1`; one reading carries both registers); while there is none yet, again every
   * minute. A register that reading lacks (flagged, or not read by the gateway then) gets a baseline
   * without a value: renderToday then counts from the next reading that has it, without searching
   * again, as it does when a register goes back. */
  function findBaseline() {
    var midnight = localMidnight(gatewayNow());
    if (S.baseline && S.baseline.day === midnight && S.baselineOut && S.baselineOut.day === midnight) {
      return null;
    }
    var now = performance.now();
    if (S.baselineTried && now - S.baselineTried < 60000) { return null; }
    S.baselineTried = now;
    var after = new Date(midnight - 1).toISOString();
    return settle(getJSON(API_HISTORY + "1440&limit=1&after=" + encodeURIComponent(after))).then(function (res) {
      if (!res.ok || !Array.isArray(res.value.points) || !res.value.points.length) { return; }
      var p = res.value.points[0];
      var t = parseTime(p.time);
      if (t === null || t < midnight) { return; }
      var exact = t - midnight <= Math.max(60, 2 * (S.pollS || 7)) * 1000;
      var baselineOf = function (wh) {
        return { day: midnight, time: wh === null ? null : t, wh: wh, exact: wh !== null && exact };
      };
      S.baseline = baselineOf(num(p.summation_wh));
      S.baselineOut = baselineOf(num(p.received_wh));
    });
  }

  /* The meter reports energy exported (CurrentSummationReceived): show import and export apart. */
  function exporting() {
    return !!S.current && num(S.current.received_wh) !== null;
  }

  // ---- time and number helpers ---------------------------------------------------------------

  function num(v) {
    return typeof v === "number" && isFinite(v) ? v : null;
  }

  function parseTime(v) {
    if (typeof v === "number" && isFinite(v)) { return v < 1e11 ? v * 1000 : v; } // epoch s or ms
    if (typeof v === "string") { var t = Date.parse(v); return isNaN(t) ? null : t; }
    return null;
  }

  function gatewayNow() { return Date.now() + S.skewMs; }

  function localMidnight(ms) {
    var d = new Date(ms);
    d.setHours(0, 0, 0, 0);
    return d.getTime();
  }

  var fmtCache = {};
  function fmt(value, digits) {
    var key = String(digits);
    if (!fmtCache[key]) {
      fmtCache[key] = new Intl.NumberFormat(undefined, {
        minimumFractionDigits: digits, maximumFractionDigits: digits, useGrouping: true });
    }
    return fmtCache[key].format(value);
  }

  function signed(value, digits) {
    var text = fmt(Math.abs(value), digits);
    return value < 0 && text.replace(/[^1-9]/g, "") !== "" ? "\u2212" + text : text;
  }

  function clock(ms, seconds) {
    var d = new Date(ms);
    var pad = function (n) { return (n < 10 ? "0" : "") + n; };
    var text = pad(d.getHours()) + ":" + pad(d.getMinutes());
    return seconds ? text + ":" + pad(d.getSeconds()) : text;
  }

  function duration(s) {
    s = Math.max(0, Math.round(s));
    if (s < 90) { return s + " s"; }
    var m = Math.round(s / 60);
    if (m < 90) { return m + " min"; }
    var h = Math.floor(s / 3600), rm = Math.round((s - h * 3600) / 60);
    if (h < 48) { return h + " h" + (rm ? " " + rm + " min" : ""); }
    return Math.floor(h / 24) + " d " + (h % 24) + " h";
  }

  function setText(node, text) {
    if (node.textContent !== text) { node.textContent = text; }
  }

  function setAttr(node, name, value) {
    if (value === null) {
      if (node.hasAttribute(name)) { node.removeAttribute(name); }
    } else if (node.getAttribute(name) !== value) {
      node.setAttribute(name, value);
    }
  }

  // ---- rendering ------------------------------------------------------------------------------

  function dataAgeS() {
    if (!S.current) { return null; }
    var age = num(S.current.age_s);
    if (age === null) { return null; }
    return age + (performance.now() - S.currentAt) / 1000;
  }

  function hanSilent() {
    var st = S.status;
    if (!st) { return false; }
    return st.han_silent === true;
  }

  function render() {
    renderNumbers();
    renderState();
    renderBanner();
    renderStatus();
    renderDownload();
    drawChart();
  }

  function renderNumbers() {
    var c = S.current;
    var w = c ? num(c.demand_w) : null;
    var wh = c ? num(c.summation_wh) : null;
    if (w === null) {
      setText(ui.demand, "\u2013");
      setText(ui.direction, "\u00a0");
      setAttr(ui.demandCard, "data-direction", null);
    } else {
      var kw = w / 1000;
      setText(ui.demand, signed(kw, Math.abs(kw) >= 100 ? 1 : 2));
      var dir = w < 0 ? "export" : (w > 0 ? "import" : "none");
      setText(ui.direction, dir === "export" ? "Exporting to the grid"
                          : dir === "import" ? "Drawing from the grid" : "No power flowing");
      setAttr(ui.demandCard, "data-direction", dir);
    }
    // With export measured, "used" would mislabel what the grid delivered (solar used at home never
    // passes the meter): the two registers are then named for their direction.
    var out = exporting();
    setText(ui.totalLabel, out ? "Imported, meter total" : "Meter register (total)");
    setText(ui.total, wh === null ? "\u2013" : kwhText(wh));
    S.baseline = renderToday(ui.today, ui.todayLabel, wh, S.baseline, out ? "Imported" : "Energy used");
    ui.exportToday.hidden = ui.exportTotal.hidden = !out;
    if (out) {
      var rwh = num(c.received_wh);
      setText(ui.totalOut, kwhText(rwh));
      S.baselineOut = renderToday(ui.todayOut, ui.todayOutLabel, rwh, S.baselineOut, "Exported");
    }
    renderUpdated();
  }

  /* A register total in kWh: to the Wh while small (a new export register), else to 10 Wh. */
  function kwhText(wh) {
    var kwh = wh / 1000;
    return fmt(kwh, Math.abs(kwh) < 10 ? 3 : 2);
  }

  /* One "today" figure: the register now minus its baseline for today. Returns the baseline to keep.
   * When the register went back (meter replaced or reset), or today's reading in history lacked it,
   * it counts from this reading on, and history is not searched again today. */
  function renderToday(valueEl, labelEl, wh, b, verb) {
    var midnight = localMidnight(gatewayNow());
    if (wh !== null && b && b.day === midnight) {
      if (b.wh === null || wh < b.wh) {
        var t = parseTime(S.current.time);
        b = { day: midnight, time: t === null ? gatewayNow() : t, wh: wh, exact: false };
      }
      var kwh = (wh - b.wh) / 1000;
      setText(valueEl, fmt(kwh, kwh < 10 ? 3 : 2));
      setText(labelEl, b.exact ? verb + " today" : verb + " since " + clock(b.time));
      return b;
    }
    setText(valueEl, "\u2013");
    setText(labelEl, verb + " today");
    return b;
  }

  function renderUpdated() {
    var age = dataAgeS();
    var stale = S.current && S.current.status === "stale";
    if (age === null) {
      setText(ui.updated, S.noData ? "No meter reading yet." : "Waiting for the first reading\u2026");
      setAttr(ui.updated, "data-stale", null);
      return;
    }
    var t = parseTime(S.current.time);
    var text = "Updated " + duration(age) + " ago" + (t !== null ? " (" + clock(t, true) + ")" : "");
    setText(ui.updated, text);
    setAttr(ui.updated, "data-stale", stale || S.failures ? "true" : null);
  }

  function renderState() {
    var level, text;
    if (S.failures && S.error) {
      level = "bad";
      text = S.error.kind === "auth" ? "Login refused" : "Gateway not answering";
    } else if (!S.status) {
      level = "wait"; text = "Connecting to the gateway\u2026";
    } else if (!S.status.state && !hanSilent()) {
      // A restarted server has no state report yet (the HAN sends one every half minute or on a
      // change); fresh readings already say the meter answers.
      var fresh = S.current && S.current.status === "ok";
      level = fresh ? "ok" : "wait";
      text = fresh ? "Meter connected" : "Waiting for the meter reader\u2026";
    } else if (hanSilent()) {
      level = "bad"; text = "Meter reader silent";
    } else {
      var s = STATES[S.status.state];
      level = s ? s[0] : "warn";
      text = s ? s[1] : String(S.status.state || "Unknown state");
      if (S.status.state === "polling" && S.current && S.current.status === "stale") {
        level = "warn"; text = "Meter connected, data stale";
      }
    }
    setText(ui.state, text);
    setAttr(ui.state, "data-level", level);
  }

  function bannerMessage() {
    var lastSeen = S.current ? parseTime(S.current.time) : null;
    var values = lastSeen !== null ? " The values shown are from " + clock(lastSeen, true) + "." : "";
    if (S.failures && S.error) {
      if (S.error.kind === "auth") {
        return ["bad", "The gateway refused the login. Reload the page to sign in again."];
      }
      var why = S.error.kind === "http" ? " (HTTP " + S.error.status + ")"
              : S.error.kind === "timeout" ? " (no answer in time)" : "";
      return ["bad", "The gateway is not answering" + why + " since " + clock(S.downSince, true) +
              "." + values + " Retrying automatically."];
    }
    if (hanSilent()) {
      // from the report's own clock, so the text stays put between fetches (it is an alert)
      var age = S.status ? num(S.status.last_message_age_s) : null;
      var at = S.status ? parseTime(S.status.time) : null;
      var since = age !== null && at !== null ? clock(at - age * 1000, true) : null;
      var valuesAt = lastSeen !== null ? clock(lastSeen, true) : null;
      return ["bad", "No word from the meter reader (HAN process)" + (since ? " since " + since : "") +
              ": it has stopped or cannot reach this server." +
              (valuesAt && valuesAt !== since ? " The values shown are from " + valuesAt + "." : "")];
    }
    var stale = S.current && S.current.status === "stale" && lastSeen !== null;
    var staleText = stale ? " No new reading since " + clock(lastSeen, true) + "." : "";
    var state = S.status ? STATES[S.status.state] : null;
    if (state && state[0] === "bad") {
      return ["bad", state[1] + ". " + (STATE_HELP[S.status.state] || "") + staleText];
    }
    if (stale) {
      return ["warn", "Stale data: no new meter reading since " + clock(lastSeen, true) + "."];
    }
    if (S.noData) {
      return ["warn", "No meter reading yet: the gateway is waiting for the meter."];
    }
    return null;
  }

  function renderBanner() {
    var msg = bannerMessage();
    if (!msg) {
      ui.banner.hidden = true;
      setText(ui.banner, "");
      return;
    }
    setAttr(ui.banner, "data-level", msg[0]);
    setText(ui.banner, msg[1]);
    ui.banner.hidden = false;
  }

  function renderStatus() {
    var st = S.status;
    if (!st) { return; }
    var s = STATES[st.state];
    var words = s ? s[1] : st.state ? String(st.state) : "No report yet";
    var detail = typeof st.detail === "string" ? st.detail : "";
    // In plain words on the card; the HAN's own wording, counts and addresses under "Technical details".
    if (hanSilent()) {               // the last report may be long out of date: say so
      setText(ui.stMeter, "Unknown (the meter reader is silent)");
      setText(ui.stDetail, st.state ? "Its last report: " + words + (detail ? " \u2014 " + detail : "") : "\u2013");
      setAttr(ui.stMeter, "data-level", "bad");
    } else {
      setText(ui.stMeter, words);
      setText(ui.stDetail, (st.state ? st.state : "no report yet") + (detail ? ": " + detail : ""));
      setAttr(ui.stMeter, "data-level", s ? s[0] : "warn");
    }

    var total = num(st.queries_total), lost = num(st.queries_lost);
    if (total !== null && lost !== null) {
      var share = total > 0 ? lost / total * 100 : 0;
      setText(ui.stLost, fmt(share, share > 0 && share < 10 ? 1 : 0) + " % (" + fmt(lost, 0) +
              " of " + fmt(total, 0) + " readings)");
      setAttr(ui.stLost, "data-level", share >= 20 ? "bad" : share >= 5 ? "warn" : "ok");
      var causes = st.lost_by_cause && typeof st.lost_by_cause === "object" ? st.lost_by_cause : {};
      var named = Object.keys(causes).filter(function (c) { return num(causes[c]) > 0; })
        .map(function (c) { return c + " " + fmt(causes[c], 0); });
      setText(ui.stQueries, fmt(total, 0) + " sent, " + fmt(lost, 0) + " lost" +
              (named.length ? " (" + named.join(", ") + ")" : ""));
    }

    var age = num(st.last_message_age_s);
    if (hanSilent()) {
      setText(ui.stHan, age !== null ? "Silent for " + duration(age) : "Not heard from yet");
      setAttr(ui.stHan, "data-level", "bad");
    } else if (age !== null) {
      setText(ui.stHan, "Reporting (last message " + duration(age) + " ago)");
      setAttr(ui.stHan, "data-level", "ok");
    }

    var m = st.meter;
    if (m && typeof m === "object") {
      var parts = [];
      if (m.ieee) { parts.push("IEEE " + m.ieee); }
      if (typeof m.nwk_hex === "string") { parts.push("address " + m.nwk_hex); }
      else if (num(m.nwk) !== null) { parts.push("address 0x" + ("000" + m.nwk.toString(16).toUpperCase()).slice(-4)); }
      if (num(m.endpoint) !== null) { parts.push("endpoint " + m.endpoint); }
      setText(ui.stIdentity, parts.join(", ") || "\u2013");
    } else {
      setText(ui.stIdentity, "Not found yet");
    }

    var ch = st.channel;
    if (ch && typeof ch === "object") {
      var cparts = [];
      if (num(ch.received) !== null) { cparts.push(fmt(ch.received, 0) + " received"); }
      if (num(ch.rejected) !== null) { cparts.push(fmt(ch.rejected, 0) + " rejected"); }
      if (num(ch.seq_missing) !== null) { cparts.push(fmt(ch.seq_missing, 0) + " lost on the way"); }
      setText(ui.stChannel, cparts.join(", ") || "\u2013");
    }

    renderHistoryHealth(st.history);

    if (num(st.lan_uptime_s) !== null) { setText(ui.stUptime, duration(st.lan_uptime_s)); }
    var up = [];
    if (num(st.lan_uptime_s) !== null) { up.push("LAN server " + duration(st.lan_uptime_s)); }
    if (num(st.han_uptime_s) !== null && !hanSilent()) { up.push("HAN meter reader " + duration(st.han_uptime_s)); }
    if (up.length) { setText(ui.stUptimes, up.join(", ")); }
    renderClock(st.clock);
    renderMeterEvent(st);
  }

  // The HAN's wall clock (README "Time"): not set yet, or stepped since it started.
  function renderClock(c) {
    if (!c || typeof c !== "object" || c.plausible === null || c.plausible === undefined) { return; }
    var text, level;
    if (c.plausible === false) {
      text = "Wrong: the gateway's clock is not set yet; " + fmt(num(c.held) || 0, 0) +
             " reading(s) held until it is";
      level = "bad";
    } else if (num(c.steps) > 0) {
      text = "The gateway's clock was wrong and was corrected " + fmt(c.steps, 0) + " time(s)" +
             (num(c.last_step_s) !== null ? " (last by " + duration(Math.abs(c.last_step_s)) +
              (c.last_step_s < 0 ? " back" : " forward") + ")" : "") + "; readings were moved to the right time";
      level = "warn";
    } else {
      text = "Set";
      level = "ok";
    }
    setText(ui.stClock, text);
    setAttr(ui.stClock, "data-level", level);
  }

  function renderMeterEvent(st) {
    var n = (num(st.meter_changes) || 0) + (num(st.register_breaks) || 0);
    if (n === 0 || !st.meter_event) {
      setText(ui.stMeterEvent, "None seen");
      setAttr(ui.stMeterEvent, "data-level", "ok");
      return;
    }
    var at = parseTime(st.meter_event.time);
    // The detail starts with "meter changed" (or "... or a bad value"), as the status JSON says it.
    var d = String(st.meter_event.detail);
    setText(ui.stMeterEvent, d.charAt(0).toUpperCase() + d.slice(1) +
            (at !== null ? " (" + new Date(at).toLocaleString() + ")" : ""));
    setAttr(ui.stMeterEvent, "data-level", "warn");
  }

  /* Whether the gateway keeps history on its disk (/api/v1/status "history"): a disk that refuses it
     (read-only, full, damaged) leaves the page working on what the gateway holds in memory. */
  function renderHistoryHealth(h) {
    if (!h || typeof h !== "object") { return; }
    var why = typeof h.problem === "string" && h.problem ? ": " + h.problem : "";
    var since = parseTime(h.problem_since);
    var when = since !== null ? " (since " + clock(since, true) + ")" : "";
    if (h.enabled === false) {
      setText(ui.stHistory, "Off (not kept on this gateway)");
      setAttr(ui.stHistory, "data-level", "ok");
    } else if (h.health === "unavailable") {
      setText(ui.stHistory, "Off — the gateway cannot open its history" + why + when +
              ". Charts and downloads show only recent readings; it keeps trying.");
      setAttr(ui.stHistory, "data-level", "bad");
    } else if (h.health === "failing") {
      setText(ui.stHistory, "Not being saved" + why + when + "; " + fmt(num(h.queued) || 0, 0) +
              " new reading(s) wait in memory and it keeps trying.");
      setAttr(ui.stHistory, "data-level", "warn");
    } else {
      var days = num(h.retention_days);
      setText(ui.stHistory, "Saved on the gateway" + (days !== null ? " (" + fmt(days, 0) + " days)" : "") +
              (num(h.rows) !== null ? ", " + fmt(h.rows, 0) + " readings" : ""));
      setAttr(ui.stHistory, "data-level", "ok");
    }
  }

  function renderDownload() {
    if (!S.subscription) { return; }
    var href = "/espi/1_1/resource/Batch/Subscription/" + encodeURIComponent(S.subscription) +
               "?download=1";
    setAttr(ui.download, "href", href);
    var day = new Date(gatewayNow());
    var stamp = day.getFullYear() + "-" + ("0" + (day.getMonth() + 1)).slice(-2) + "-" +
                ("0" + day.getDate()).slice(-2);
    setAttr(ui.download, "download", "green-button-" + stamp + ".xml");
  }

  // ---- the chart (inline SVG built with DOM calls; CSS gives it its colours) --------------------

  var SVGNS = "http://www.w3.org/2000/svg";
  var MIN = 60000, HOUR = 3600000;
  var TICKS = [15000, 30000, MIN, 2 * MIN, 5 * MIN, 10 * MIN, 15 * MIN, 30 * MIN, HOUR, 2 * HOUR, 3 * HOUR, 6 * HOUR, 12 * HOUR];

  function svg(name, attrs, parent, text) {
    var node = document.createElementNS(SVGNS, name);
    for (var k in attrs) {
      if (Object.prototype.hasOwnProperty.call(attrs, k)) { node.setAttribute(k, String(attrs[k])); }
    }
    if (text !== undefined) { node.textContent = text; }
    if (parent) { parent.appendChild(node); }
    return node;
  }

  /* Decimals that show a tick step exactly: 0.25 -> 2, 0.5 -> 1, 2 -> 0. */
  function decimalsOf(step) {
    for (var d = 0; d < 4; d++) {
      if (Math.abs(step * Math.pow(10, d) - Math.round(step * Math.pow(10, d))) < 1e-6) { return d; }
    }
    return 4;
  }

  function niceStep(span, count) {
    var raw = span / Math.max(1, count);
    var mag = Math.pow(10, Math.floor(Math.log(raw) / Math.LN10));
    var norm = raw / mag;
    var step = norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 2.5 ? 2.5 : norm <= 5 ? 5 : 10;
    return step * mag;
  }

  /* Split points into runs of consecutive slots. A run ends at a missing slot, a reading without a
   * demand, or a jump in time of more than 1.5 poll intervals (for example while the HAN was down). */
  function runsOf(points, intervalMs) {
    var runs = [], run = [];
    for (var i = 0; i < points.length; i++) {
      var p = points[i];
      if (p.w === null) {
        if (run.length) { runs.push(run); run = []; }
        continue;
      }
      var prev = run.length ? run[run.length - 1] : null;
      if (prev) {
        var slotBreak = p.slot !== null && prev.slot !== null && p.slot !== prev.slot + 1;
        var timeBreak = p.t - prev.t > intervalMs * 1.5;
        if (slotBreak || timeBreak) { runs.push(run); run = []; }
      }
      run.push(p);
    }
    if (run.length) { runs.push(run); }
    return runs;
  }

  function drawChart() {
    var box = ui.chart.getBoundingClientRect();
    var width = Math.max(200, Math.round(box.width));
    var height = Math.max(120, Math.round(box.height));
    var minutes = S.range;
    var h = S.history[minutes];
    var chart = ui.chart;
    var rem = parseFloat(getComputedStyle(document.documentElement).fontSize) || 16;

    while (chart.firstChild) { chart.removeChild(chart.firstChild); }
    chart.setAttribute("viewBox", "0 0 " + width + " " + height);

    var intervalS = (h && h.intervalS) || S.pollS || 7;
    var intervalMs = intervalS * 1000;
    var end = gatewayNow();
    var start = end - minutes * 60000;
    // When history holds less than the range (the gateway started recently), the axis starts at the
    // first reading, so the readings are not a sliver at the right edge and nothing before them is
    // drawn as if it were known; the title says so.
    var held = firstEntry(h);
    var since = null;
    if (held !== null && held > start) {
      start = Math.min(held, end - intervalMs);
      since = held;
    }
    var pad = { l: Math.round(3.2 * rem), r: Math.round(0.6 * rem), t: Math.round(0.6 * rem),
                b: Math.round(1.6 * rem) };
    var pw = width - pad.l - pad.r, ph = height - pad.t - pad.b;
    var x = function (t) { return pad.l + (t - start) / (end - start) * pw; };

    var points = h ? h.points.filter(function (p) { return p.t >= start - intervalMs && p.t <= end + intervalMs; }) : [];
    var gaps = h ? h.gaps.filter(function (g) { return g.t >= start - intervalMs && g.t <= end; }) : [];
    var shown = points.filter(function (p) { return p.w !== null; });

    var lo = 0, hi = 0;
    shown.forEach(function (p) { var kw = p.w / 1000; if (kw < lo) { lo = kw; } if (kw > hi) { hi = kw; } });
    if (hi - lo < 0.1) { hi = lo + 0.1; }
    var ticksWanted = Math.max(2, Math.min(6, Math.floor(ph / (2.2 * rem))));
    var step = niceStep(hi - lo, ticksWanted);
    lo = Math.floor(lo / step) * step;
    hi = Math.ceil(hi / step) * step;
    if (hi === lo) { hi = lo + step; }
    var y = function (kw) { return pad.t + (hi - kw) / (hi - lo) * ph; };

    var grid = svg("g", { "class": "grid-layer", "aria-hidden": "true" }, chart);
    var digits = decimalsOf(step);
    for (var v = lo; v <= hi + step / 2; v += step) {
      var yy = Math.round(y(v)) + 0.5;
      svg("line", { "class": Math.abs(v) < step / 2 && lo < 0 ? "zero" : "grid",
                    x1: pad.l, x2: pad.l + pw, y1: yy, y2: yy }, grid);
      svg("text", { "class": "axis", x: pad.l - 0.4 * rem, y: yy + 0.3 * rem, "text-anchor": "end" },
          grid, signed(Math.abs(v) < step / 2 ? 0 : v, digits));
    }
    svg("text", { "class": "axis", x: pad.l - 0.4 * rem, y: pad.t - 0.1 * rem + 0.3 * rem, "text-anchor": "end", "dy": "-0.9em" },
        grid, "kW");

    // time axis: a round step on local clock boundaries, labels at least ~4.5 rem apart
    var tickMs = TICKS[TICKS.length - 1];
    for (var i = 0; i < TICKS.length; i++) {
      if (TICKS[i] / (end - start) * pw >= 4.5 * rem) { tickMs = TICKS[i]; break; }
    }
    var offset = new Date(start).getTimezoneOffset() * 60000;
    for (var t = Math.ceil((start - offset) / tickMs) * tickMs + offset; t <= end; t += tickMs) {
      var xx = Math.round(x(t)) + 0.5;
      if (xx < pad.l || xx > pad.l + pw) { continue; }
      svg("line", { "class": "grid", x1: xx, x2: xx, y1: pad.t, y2: pad.t + ph }, grid);
      svg("text", { "class": "axis", x: xx, y: height - 0.35 * rem, "text-anchor": "middle" }, grid,
          clock(t, tickMs < MIN));
    }

    // missed slots: one band per gap, as wide as a poll slot (at least 2 px so it stays visible)
    var gapLayer = svg("g", { "class": "gap-layer" }, chart);
    var slotPx = Math.max(2, intervalMs / (end - start) * pw);
    gaps.forEach(function (g) {
      var gx = Math.max(pad.l, x(g.t) - slotPx / 2);
      var gw = Math.min(pad.l + pw, x(g.t) + slotPx / 2) - gx;
      if (gw <= 0) { return; }
      var r = svg("rect", { "class": "gap", x: gx.toFixed(1), y: pad.t, width: gw.toFixed(1), height: ph,
                            "data-slot": g.slot === null ? "" : g.slot, "data-cause": g.cause }, gapLayer);
      svg("title", {}, r, "missed reading at " + clock(g.t, true) + (g.cause ? " (" + g.cause + ")" : ""));
    });

    // the line, broken wherever a slot is missing
    var runs = runsOf(points, intervalMs);
    var d = [];
    var lineLayer = svg("g", { "class": "line-layer" }, chart);
    runs.forEach(function (run) {
      var pts = decimate(run, x, pw);
      if (pts.length === 1) {
        svg("circle", { "class": "dot", cx: x(pts[0].t).toFixed(1), cy: y(pts[0].w / 1000).toFixed(1), r: 2.5 }, lineLayer);
        return;
      }
      d.push(pts.map(function (p, i) {
        return (i ? "L" : "M") + x(p.t).toFixed(1) + " " + y(p.w / 1000).toFixed(1);
      }).join(""));
    });
    if (d.length) { svg("path", { "class": "line", d: d.join("") }, lineLayer); }

    if (!shown.length) {
      svg("text", { "class": "nodata", x: pad.l + pw / 2, y: pad.t + ph / 2, "text-anchor": "middle" },
          chart, h ? "No readings in this period" : "Loading history\u2026");
    }

    chart.setAttribute("data-start", new Date(start).toISOString());
    chart.setAttribute("data-runs", String(runs.length));
    chart.setAttribute("data-gaps", String(gaps.length));
    chart.setAttribute("data-points", String(shown.length));

    var title = since !== null ? "Demand since " + clock(since) + (minutes <= 60 ? "" : " (all history held)")
              : minutes <= 60 ? "Demand, last hour" : "Demand, last 24 hours";
    setText(ui.chartTitle, title);
    setText(ui.chartSummary, chartSummary(shown, gaps, minutes, h, since));
  }

  /* Many more points than pixels (24 h at a short poll): keep each pixel column's min and max, in
   * time order, so peaks survive and the path stays small. Never joins across runs. */
  function decimate(run, x, pw) {
    if (run.length <= pw * 2) { return run; }
    var out = [], col = null, mn = null, mx = null;
    var flush = function () {
      if (mn === null) { return; }
      if (mn === mx) { out.push(mn); } else if (mn.t < mx.t) { out.push(mn, mx); } else { out.push(mx, mn); }
    };
    run.forEach(function (p) {
      var c = Math.floor(x(p.t));
      if (c !== col) { flush(); col = c; mn = mx = p; return; }
      if (p.w < mn.w) { mn = p; }
      if (p.w > mx.w) { mx = p; }
    });
    flush();
    return out;
  }

  function firstEntry(h) {
    if (!h) { return null; }
    var t = h.points.length ? h.points[0].t : null;
    if (h.gaps.length && (t === null || h.gaps[0].t < t)) { t = h.gaps[0].t; }
    return t;
  }

  /* Readings behind the points: one each, or a per-minute bucket's count. */
  function readingsIn(points) {
    return points.reduce(function (sum, p) { return sum + (p.n === undefined ? 1 : p.n); }, 0);
  }

  function chartSummary(shown, gaps, minutes, h, since) {
    var span = since !== null ? "the time since " + clock(since)
             : minutes <= 60 ? "the last hour" : "the last 24 hours";
    if (!h) { return "Loading the history of " + span + "."; }
    if (!shown.length) { return "No readings in " + span + "."; }
    var lo = Infinity, hi = -Infinity;
    shown.forEach(function (p) { lo = Math.min(lo, p.w); hi = Math.max(hi, p.w); });
    var text = "Demand over " + span + ": lowest " + signed(lo / 1000, 2) + " kW, highest " +
               signed(hi / 1000, 2) + " kW, " + readingsIn(shown) + " readings";
    text += gaps.length ? ", " + gaps.length + " missed." : ", none missed.";
    if (since !== null) {
      text += " The gateway holds no older history.";
    }
    return text;
  }

  // ---- wiring ---------------------------------------------------------------------------------

  function setRange(minutes) {
    if (minutes === S.range) { return; }
    S.range = minutes;
    [ui.range60, ui.range1440].forEach(function (b) {
      b.setAttribute("aria-pressed", String(Number(b.getAttribute("data-minutes")) === minutes));
    });
    drawChart();
    if (!S.failures) {
      refreshHistory(true).then(drawChart);
    }
  }

  function start() {
    ui.state = $("state");
    ui.banner = $("banner");
    ui.demand = $("demand-value");
    ui.demandCard = ui.demand.closest(".card");
    ui.direction = $("direction");
    ui.today = $("today-value");
    ui.todayLabel = $("today-label");
    ui.total = $("total-value");
    ui.totalLabel = $("total-label");
    ui.todayOut = $("today-export-value");
    ui.todayOutLabel = $("today-export-label");
    ui.totalOut = $("total-export-value");
    ui.exportToday = ui.todayOut.closest(".card");
    ui.exportTotal = ui.totalOut.closest(".card");
    ui.updated = $("updated");
    ui.chart = $("chart");
    ui.chartTitle = $("chart-title");
    ui.chartSummary = $("chart-summary");
    ui.range60 = $("range-60");
    ui.range1440 = $("range-1440");
    ui.stMeter = $("st-meter");
    ui.stDetail = $("st-detail");
    ui.stLost = $("st-lost");
    ui.stHan = $("st-han");
    ui.stIdentity = $("st-identity");
    ui.stChannel = $("st-channel");
    ui.stHistory = $("st-history");
    ui.stUptime = $("st-uptime");
    ui.stUptimes = $("st-uptimes");
    ui.stQueries = $("st-queries");
    ui.stClock = $("st-clock");
    ui.stMeterEvent = $("st-meter-event");
    ui.download = $("download");

    [ui.range60, ui.range1440].forEach(function (b) {
      b.addEventListener("click", function () { setRange(Number(b.getAttribute("data-minutes"))); });
    });

    var resizeTimer = null;
    window.addEventListener("resize", function () {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(drawChart, 100);
    });
    // Back on screen or back online: try at once instead of waiting out a long back-off.
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden && S.failures && !S.inFlight) { schedule(0); }
    });
    window.addEventListener("online", function () { if (!S.inFlight) { schedule(0); } });

    setInterval(function () {
      renderUpdated();
      if (S.current || S.status) { renderStatusAges(); }
    }, 1000);
    setInterval(function () { if (!S.inFlight) { drawChart(); } }, 15000);  // the time axis moves on

    drawChart();
    tick();
  }

  /* The few texts that count seconds are refreshed between fetches without touching anything else. */
  function renderStatusAges() {
    var st = S.status;
    if (!st || hanSilent()) { return; }
    var age = num(st.last_message_age_s);
    if (age !== null) {
      var now = age + (performance.now() - S.statusAt) / 1000;
      setText(ui.stHan, "Reporting (last message " + duration(now) + " ago)");
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
