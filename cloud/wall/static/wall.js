// SafeWatch control-room wall. Plain JavaScript, no libraries, no network but this API.
//
// Token: a kiosk opens /wall#token=<machine token> (kept in localStorage, the fragment is
// removed from the address bar and never reaches a server); anyone else logs in with the
// form (an access token kept in this tab's sessionStorage). Every data call sends it as
// "Authorization: Bearer"; the live stream is read with fetch() for the same reason.
// Language: ?lang=zh|en, else the last choice, else the browser's language.
"use strict";
(function () {
  const TOKEN_KEY = "safewatch.wall.token";
  const LANG_KEY = "safewatch.wall.lang";
  const KPI_EVERY_MS = 30000;
  const STALE_AFTER_MS = 35000; // the server pings every 15 s; two missed pings: stale
  const ACT_ROLES = ["admin", "safety_engineer"]; // roles of the commands route
  const SHELVE_MINUTES = [15, 60, 240, 480]; // offered shelve durations (the gateway caps a week)
  const SHELVABLE = ["unacknowledged", "acknowledged", "returned_unacknowledged"];
  const REMOVABLE = SHELVABLE.concat(["shelved", "suppressed"]);

  const TEXT = {
    en: {
      title: "SafeWatch control room", map: "Site map", alarms: "Active alarms",
      noAlarms: "No active alarms", login: "Log in", user: "User", password: "Password",
      signIn: "Sign in", logout: "Log out", connecting: "CONNECTING", live: "LIVE",
      lost: "CONNECTION LOST", kioskHint: "Kiosk: open /wall#token=<viewer API token>",
      loginFailed: "Login failed", noRisk: "No risk map configured (cloud run --risk-file)",
      staleBanner: "Connection lost: the data shown is from ", ack: "Acknowledge",
      ackSent: "Sent", ackFailed: "Failed", since: "since", noSite: "No site: open /wall?site=<site id>",
      shelve: "Shelve", unshelve: "Unshelve", oos: "Out of service", restore: "Return to service",
      reason: "Reason", needReason: "A reason is required", until: "until", min: "min", h: "h",
      "grade.red": "Major", "grade.orange": "Higher", "grade.yellow": "General", "grade.blue": "Low",
      "level.cut": "POWER CUT", "level.alarm": "ALARM", "level.fault": "FAULT", "level.normal": "CLEARED",
      "state.unacknowledged": "Unacknowledged", "state.acknowledged": "Acknowledged",
      "state.returned_unacknowledged": "Cleared, unacknowledged", "state.shelved": "Shelved",
      "state.out_of_service": "Out of service", "state.suppressed": "Suppressed", "state.normal": "Normal",
      "kpi.active": "Active alarms", "kpi.unack": "Unacknowledged", "kpi.gateways": "Gateways online",
      "kpi.rate": "Alarms / 10 min (12 h)", "kpi.peak": "Peak / 10 min", "kpi.flood": "Time in flood",
      "kpi.hazards": "Open hazards", "kpi.overdue": "Overdue hazards", "kpi.rectified": "Rectification rate",
      "kpi.ontime": "On-time rate",
    },
    zh: {
      title: "SafeWatch 安全监控大屏", map: "区域风险图", alarms: "当前报警",
      noAlarms: "无报警", login: "登录", user: "用户名", password: "密码",
      signIn: "登录", logout: "退出", connecting: "连接中", live: "实时",
      lost: "连接中断", kioskHint: "值守屏：打开 /wall#token=<只读 API 令牌>",
      loginFailed: "登录失败", noRisk: "未配置风险分区（cloud run --risk-file）",
      staleBanner: "连接中断：所示数据截至 ", ack: "确认", ackSent: "已发送", ackFailed: "失败",
      shelve: "搁置", unshelve: "取消搁置", oos: "停用", restore: "恢复投用",
      reason: "原因", needReason: "请填写原因", until: "至", min: "分钟", h: "小时",
      since: "始于", noSite: "无站点：请打开 /wall?site=<站点>",
      "grade.red": "重大风险", "grade.orange": "较大风险", "grade.yellow": "一般风险", "grade.blue": "低风险",
      "level.cut": "断电", "level.alarm": "报警", "level.fault": "故障", "level.normal": "已恢复",
      "state.unacknowledged": "未确认", "state.acknowledged": "已确认",
      "state.returned_unacknowledged": "已恢复未确认", "state.shelved": "已搁置",
      "state.out_of_service": "停用", "state.suppressed": "已抑制", "state.normal": "正常",
      "kpi.active": "当前报警", "kpi.unack": "未确认报警", "kpi.gateways": "网关在线",
      "kpi.rate": "报警数/10分钟（12小时）", "kpi.peak": "峰值/10分钟", "kpi.flood": "报警泛滥时间",
      "kpi.hazards": "未闭环隐患", "kpi.overdue": "超期隐患", "kpi.rectified": "整改率", "kpi.ontime": "按期整改率",
    },
  };

  const params = new URLSearchParams(location.search);
  let lang = pickLang();
  let token = takeToken();
  let role = "";
  let snap = null; // the newest snapshot
  let kpi = { alarms: null, hazards: null };
  let lastData = 0; // Date.now() of the newest byte from the stream
  let firstRendered = false;
  let streamAbort = null;
  let streamGen = 0; // a newer stream() ends the older one's reconnect loop
  let kpiTimer = null;
  // what an operator typed or chose per alarm, kept across the list's re-renders
  const drafts = { reason: {}, minutes: {} };
  const $ = (id) => document.getElementById(id);

  function pickLang() {
    const asked = (params.get("lang") || "").toLowerCase();
    if (asked === "zh" || asked === "en") {
      localStorage.setItem(LANG_KEY, asked);
      return asked;
    }
    const saved = localStorage.getItem(LANG_KEY);
    if (saved === "zh" || saved === "en") return saved;
    return (navigator.language || "").toLowerCase().startsWith("zh") ? "zh" : "en";
  }

  function t(key) {
    return (TEXT[lang] && TEXT[lang][key]) || TEXT.en[key] || key;
  }

  function takeToken() {
    const hash = new URLSearchParams(location.hash.replace(/^#/, ""));
    const fromHash = hash.get("token");
    if (fromHash) {
      localStorage.setItem(TOKEN_KEY, fromHash);
      history.replaceState(null, "", location.pathname + location.search);
      return fromHash;
    }
    return sessionStorage.getItem(TOKEN_KEY) || localStorage.getItem(TOKEN_KEY) || "";
  }

  function forgetToken() {
    token = "";
    role = "";
    sessionStorage.removeItem(TOKEN_KEY);
    localStorage.removeItem(TOKEN_KEY);
  }

  // -- API -------------------------------------------------------------------------------

  class Unauthorized extends Error {}

  async function api(path, options) {
    const opts = Object.assign({ headers: {} }, options || {});
    opts.headers = Object.assign({ Authorization: "Bearer " + token }, opts.headers);
    return answer(await fetch(path, opts));
  }

  async function answer(r) {
    if (r.status === 401) throw new Unauthorized("401");
    if (!r.ok) {
      let detail = r.status + " " + r.statusText;
      try { detail = (await r.json()).detail || detail; } catch (e) { /* not JSON */ }
      throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
    }
    return r.status === 204 ? null : r.json();
  }

  function firstSnapshot() {
    // the call index.html started early, if it was made with the token in use
    const early = window.safewatchFirst;
    window.safewatchFirst = null;
    if (early && early.token === token) return early.answer.then(answer);
    return api("api/v1/wall/snapshot" + siteQuery(params.get("site")));
  }

  function siteQuery(site) {
    return site ? "?site=" + encodeURIComponent(site) : "";
  }

  // -- rendering -------------------------------------------------------------------------

  function el(tag, attrs, text) {
    const ns = ["svg", "g", "polygon", "text", "title", "tspan"].includes(tag)
      ? "http://www.w3.org/2000/svg" : null;
    const node = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function applyLanguage() {
    document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
    document.title = t("title");
    for (const node of document.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
    $("lang").textContent = lang === "zh" ? "English" : "中文";
    if (snap) render(snap);
    renderKpis();
    renderLink();
  }

  function renderMap(areas) {
    const svg = $("map");
    svg.replaceChildren();
    const pts = areas.flatMap((a) => a.polygon);
    if (!pts.length) {
      svg.setAttribute("viewBox", "0 0 100 20");
      svg.append(el("text", { x: 50, y: 10, class: "empty", "font-size": 4, fill: "#b8c2cc", "text-anchor": "middle" }, t("noRisk")));
      return;
    }
    const xs = pts.map((p) => p[0]);
    const ys = pts.map((p) => p[1]);
    const minX = Math.min(...xs), maxX = Math.max(...xs), minY = Math.min(...ys), maxY = Math.max(...ys);
    const w = Math.max(maxX - minX, 1e-9), h = Math.max(maxY - minY, 1e-9);
    const pad = Math.max(w, h) * 0.03;
    svg.setAttribute("viewBox", [minX - pad, minY - pad, w + 2 * pad, h + 2 * pad].join(" "));
    const flip = (y) => maxY + minY - y; // y grows north in the risk file, down in SVG
    const font = Math.max(w, h) / 24;
    for (const a of areas) {
      const g = el("g", { class: "area", "data-area": a.id, "data-grade": a.grade });
      const why = a.contributions.map((c) => c.factor + " " + c.detail + " +" + c.points).join("\n");
      g.append(el("title", {}, a.name + " - " + t("grade." + a.grade) + (why ? "\n" + why : "")));
      g.append(el("polygon", { points: a.polygon.map((p) => p[0] + "," + flip(p[1])).join(" ") }));
      const cx = a.polygon.reduce((s, p) => s + p[0], 0) / a.polygon.length;
      const cy = a.polygon.reduce((s, p) => s + flip(p[1]), 0) / a.polygon.length;
      const label = el("text", { x: cx, y: cy, "font-size": font });
      label.append(el("tspan", { x: cx, dy: "-0.6em" }, a.name));
      label.append(el("tspan", { x: cx, dy: "1.2em" },
        t("grade." + a.grade) + (a.alarms ? "  ⚠ " + a.alarms : "")));
      g.append(label);
      svg.append(g);
    }
  }

  function fmt(v) {
    return v === null || v === undefined ? "—" : Number(v).toFixed(Math.abs(v) < 10 ? 2 : 1);
  }

  function clock(iso) {
    const d = new Date(iso);
    return d.toLocaleString(lang === "zh" ? "zh-CN" : "en-GB", { hour12: false });
  }

  function stateText(a) {
    let text = t("state." + a.state);
    if (a.state === "shelved" && a.shelved_until) text += " " + t("until") + " " + clock(a.shelved_until);
    if (a.note) text += " · " + a.note;
    return text;
  }

  function actionButton(cls, label, onClick) {
    const b = el("button", { type: "button", class: "small " + cls }, t(label));
    b.addEventListener("click", () => onClick(b));
    return b;
  }

  // the operator actions a permitted role gets for an alarm in this state
  function actions(site, a) {
    const box = el("span", { class: "actions" });
    const id = a.alarm_id;
    if (a.state === "unacknowledged" || a.state === "returned_unacknowledged") {
      const b = actionButton("ack", "ack", (btn) =>
        command(site, a, "acknowledge", { why: "acknowledged on the wall" }, btn));
      b.classList.remove("small");
      b.dataset.alarm = id;
      box.append(b);
    }
    if (SHELVABLE.includes(a.state)) {
      const pick = el("select", { class: "shelve-for", "aria-label": t("shelve") });
      for (const m of SHELVE_MINUTES) {
        const o = el("option", { value: m }, m < 60 ? m + " " + t("min") : m / 60 + " " + t("h"));
        if (String(m) === String(drafts.minutes[id] || 60)) o.selected = true;
        pick.append(o);
      }
      pick.addEventListener("change", () => { drafts.minutes[id] = pick.value; });
      box.append(pick, actionButton("shelve", "shelve", (btn) => command(site, a, "shelve",
        { duration_s: Number(pick.value) * 60, why: reasonOf(id) || "shelved on the wall" }, btn)));
    }
    if (a.state === "shelved" || a.state === "suppressed") {
      box.append(actionButton("unshelve", "unshelve", (btn) =>
        command(site, a, "unshelve", { why: "unshelved on the wall" }, btn)));
    }
    if (REMOVABLE.includes(a.state)) {
      const reason = el("input", { class: "oos-reason", placeholder: t("reason"), maxlength: 200, value: reasonOf(id) });
      reason.addEventListener("input", () => { drafts.reason[id] = reason.value; });
      box.append(reason, actionButton("oos", "oos", (btn) => {
        const why = reason.value.trim();
        if (!why) {
          btn.title = t("needReason");
          reason.classList.add("missing");
          reason.focus();
          return;
        }
        command(site, a, "out_of_service", { why: why }, btn);
      }));
    }
    if (a.state === "out_of_service") {
      box.append(actionButton("restore", "restore", (btn) =>
        command(site, a, "return_to_service", { why: "returned on the wall" }, btn)));
    }
    return box;
  }

  function reasonOf(id) {
    return (drafts.reason[id] || "").trim();
  }

  function renderAlarms(site, alarms) {
    const list = $("alarms");
    const focused = document.activeElement;
    const typing = focused && focused.classList && focused.classList.contains("oos-reason")
      ? focused.closest("li").dataset.alarm : null;
    list.replaceChildren();
    const canAct = ACT_ROLES.includes(role);
    for (const a of alarms) {
      const li = el("li", { class: "alarm", "data-alarm": a.alarm_id, "data-level": a.level, "data-state": a.state });
      if (a.shelved_until) li.dataset.shelvedUntil = a.shelved_until;
      li.append(el("span", { class: "tag" }, a.tag + "  "));
      li.lastChild.append(el("span", { class: "lvl" }, t("level." + a.level)));
      li.append(el("span", { class: "value" }, fmt(a.value) + (a.threshold !== null ? " / " + fmt(a.threshold) : "")));
      li.append(el("span", { class: "where" }, [a.area, a.position, a.gateway].filter(Boolean).join(" · ")));
      li.append(el("span", { class: "when" }, t("since") + " " + clock(a.since)));
      li.append(el("span", { class: "state" }, stateText(a)));
      if (canAct) li.append(actions(site, a));
      list.append(li);
      if (typing === a.alarm_id) { // the list was redrawn under the operator's typing
        const input = li.querySelector(".oos-reason");
        if (input) input.focus();
      }
    }
    $("no-alarms").hidden = alarms.length > 0;
    const count = $("alarm-count");
    count.textContent = alarms.length;
    count.classList.toggle("hot", alarms.some((a) => a.state === "unacknowledged" || a.level === "cut"));
  }

  function kpiTile(key, value, bad) {
    const d = el("div", { class: "kpi" + (bad ? " bad" : ""), "data-kpi": key });
    d.append(el("div", { class: "k" }, t("kpi." + key)), el("div", { class: "v" }, value));
    return d;
  }

  function pct(x) {
    return x === null || x === undefined ? "—" : Math.round(x * 100) + " %";
  }

  function renderKpis() {
    const box = $("kpis");
    box.replaceChildren();
    if (!snap) return;
    const unack = snap.alarms.filter((a) => a.state === "unacknowledged" || a.state === "returned_unacknowledged").length;
    const online = snap.gateways.filter((g) => g.state === "online").length;
    box.append(kpiTile("active", snap.alarms.length, snap.alarms.length > 0));
    box.append(kpiTile("unack", unack, unack > 0));
    box.append(kpiTile("gateways", online + " / " + snap.gateways.length, online < snap.gateways.length));
    const a = kpi.alarms;
    if (a) {
      box.append(kpiTile("rate", a.avg_per_10min_per_operator, a.avg_per_10min_per_operator > 1));
      box.append(kpiTile("peak", a.peak_per_10min_per_operator, a.peak_per_10min_per_operator > 10));
      box.append(kpiTile("flood", pct(a.flood_share), a.flood_share >= 0.01));
    }
    const h = kpi.hazards;
    if (h) {
      box.append(kpiTile("hazards", h.open, false));
      box.append(kpiTile("overdue", h.overdue, h.overdue > 0));
      box.append(kpiTile("rectified", pct(h.rectification_rate), false));
      box.append(kpiTile("ontime", pct(h.on_time_rate), false));
    }
  }

  function renderLink() {
    const link = $("link");
    const stale = firstRendered && Date.now() - lastData > STALE_AFTER_MS;
    const state = !firstRendered ? "connecting" : stale ? "lost" : link.dataset.link === "lost" ? "lost" : "live";
    link.dataset.link = state;
    link.textContent = t(state);
    document.body.dataset.state = state === "lost" ? "stale" : firstRendered ? "live" : "starting";
    const banner = $("banner");
    banner.hidden = state !== "lost";
    if (state === "lost" && snap) banner.textContent = t("staleBanner") + clock(snap.at);
  }

  function render(s) {
    snap = s;
    $("site").textContent = s.site;
    renderMap(s.areas);
    renderAlarms(s.site, s.alarms);
    renderKpis();
    document.body.dataset.version = s.version;
    if (!firstRendered) {
      firstRendered = true;
      lastData = Date.now();
      // the first screen: measured from navigation start (performance timeline)
      performance.mark("wall-map-rendered");
    }
    renderLink();
  }

  // -- actions ---------------------------------------------------------------------------

  // one operator action as a signed command through the API; the gateway applies it and
  // its alarm_state event brings the new state back with the stream
  async function command(site, alarm, action, args, button) {
    button.disabled = true;
    try {
      await api("api/v1/gateways/" + encodeURIComponent(site) + "/" + encodeURIComponent(alarm.gateway) + "/commands", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ action: action, args: Object.assign({ alarm: alarm.alarm_id }, args) }),
      });
      if (action === "out_of_service") delete drafts.reason[alarm.alarm_id];
      button.textContent = t("ackSent"); // the new state arrives with the gateway's answer
    } catch (e) {
      if (e instanceof Unauthorized) return needLogin();
      button.textContent = t("ackFailed");
      button.title = e.message;
      button.disabled = false;
    }
  }

  // -- live stream (server-sent events over fetch) -------------------------------------------

  function parseEvent(block) {
    const ev = { event: "message", data: [], id: null, retry: null };
    for (const line of block.split(/\r\n|\r|\n/)) {
      if (!line || line.startsWith(":")) continue;
      const i = line.indexOf(":");
      const field = i < 0 ? line : line.slice(0, i);
      const value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
      if (field === "data") ev.data.push(value);
      else if (field === "event") ev.event = value;
      else if (field === "id") ev.id = value;
      else if (field === "retry") ev.retry = parseInt(value, 10);
    }
    return ev;
  }

  async function stream(site) {
    const gen = ++streamGen;
    let retryMs = 3000;
    while (token && gen === streamGen) {
      streamAbort = new AbortController();
      try {
        const r = await fetch("api/v1/wall/stream" + siteQuery(site), {
          headers: { Authorization: "Bearer " + token, Accept: "text/event-stream" },
          signal: streamAbort.signal,
        });
        if (r.status === 401) return needLogin();
        if (!r.ok) throw new Error("stream " + r.status);
        const reader = r.body.getReader();
        const decoder = new TextDecoder();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          lastData = Date.now();
          buf += decoder.decode(value, { stream: true });
          const blocks = buf.split(/\r\n\r\n|\n\n|\r\r/);
          buf = blocks.pop();
          for (const block of blocks) {
            const ev = parseEvent(block);
            if (ev.retry) retryMs = ev.retry;
            if (ev.event === "snapshot" && ev.data.length) {
              const was = snap ? snap.alarms.length : -1;
              render(JSON.parse(ev.data.join("\n")));
              if (snap.alarms.length !== was) loadKpis(site);
            } else if (ev.event === "auth") {
              return needLogin();
            }
          }
          if ($("link").dataset.link !== "live") { $("link").dataset.link = "live"; renderLink(); }
        }
        if (!token || gen !== streamGen) return;
      } catch (e) {
        if (!token || gen !== streamGen) return;
      }
      $("link").dataset.link = "lost";
      renderLink();
      await new Promise((ok) => setTimeout(ok, retryMs));
    }
  }

  async function loadKpis(site) {
    try {
      const [alarms, hazards] = await Promise.all([
        api("api/v1/alarms/kpi" + siteQuery(site) + "&hours=12"),
        api("api/v1/hazards/kpis"),
      ]);
      kpi = { alarms: alarms, hazards: hazards };
      renderKpis();
    } catch (e) {
      if (e instanceof Unauthorized) needLogin();
    }
  }

  // -- start, login, logout --------------------------------------------------------------

  function needLogin() {
    forgetToken();
    streamGen++;
    if (streamAbort) streamAbort.abort();
    if (kpiTimer) clearInterval(kpiTimer);
    $("logout").hidden = true;
    $("who").textContent = "";
    $("login").hidden = false;
    $("username").focus();
  }

  async function start() {
    if (!token) return needLogin();
    $("login").hidden = true;
    $("logout").hidden = false;
    const snapshot = firstSnapshot();
    const me = api("api/v1/auth/me").then((p) => {
      role = p.role;
      $("who").textContent = p.name + " (" + p.role + ")";
      if (snap) renderAlarms(snap.site, snap.alarms);
    }).catch(() => {}); // a 401 is handled by the snapshot call
    let first;
    try {
      first = await snapshot;
    } catch (e) {
      if (e instanceof Unauthorized) return needLogin();
      $("banner").hidden = false;
      $("banner").textContent = e.message.startsWith("no site") ? t("noSite") : e.message;
      setTimeout(start, 5000);
      return;
    }
    render(first);
    stream(first.site);
    loadKpis(first.site);
    kpiTimer = setInterval(() => loadKpis(first.site), KPI_EVERY_MS);
  }

  async function login(ev) {
    ev.preventDefault();
    $("login-error").textContent = "";
    const body = new URLSearchParams({ username: $("username").value, password: $("password").value });
    try {
      const r = await fetch("api/v1/auth/token", { method: "POST", body: body });
      if (!r.ok) throw new Error(t("loginFailed") + " (" + r.status + ")");
      token = (await r.json()).access_token;
      sessionStorage.setItem(TOKEN_KEY, token);
      $("password").value = "";
      start();
    } catch (e) {
      $("login-error").textContent = e.message;
    }
  }

  function init() {
    $("lang").addEventListener("click", () => {
      lang = lang === "zh" ? "en" : "zh";
      localStorage.setItem(LANG_KEY, lang);
      params.set("lang", lang);
      history.replaceState(null, "", location.pathname + "?" + params.toString());
      applyLanguage();
    });
    $("logout").addEventListener("click", needLogin);
    $("login").addEventListener("submit", login);
    applyLanguage();
    start();
    const tick = () => {
      $("clock").textContent = new Date().toLocaleTimeString(lang === "zh" ? "zh-CN" : "en-GB", { hour12: false });
      if (firstRendered) renderLink();
    };
    tick();
    setInterval(tick, 1000);
  }

  // the script sits at the end of the body: the elements exist, start at once
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
