// kvmkit's web console. The token came in the page's address (?token=T);
// the server set it as a cookie, which every request below carries.
"use strict";
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));

function say(text, err) { const m = $("msg"); m.textContent = text; m.className = err ? "err" : ""; }

async function call(method, url, body) {
  const r = await fetch(url, {method, headers: {"Content-Type": "application/json"}, body});
  const j = await r.json().catch(() => ({}));
  if (!r.ok) say(j.error || r.statusText, true); else say(j.message || "ok", false);
  refresh();
  return {ok: r.ok, body: j};
}

// ---- the VM list ----
const ACTIONS = ["start", "stop", "pause", "resume", "kill", "undefine"];
let vmsCache = [];
async function refresh() {
  const r = await fetch("/api/vms");
  if (!r.ok) { say("token refused (" + r.status + "): open the address kvmkit serve printed", true); return; }
  vmsCache = await r.json();
  $("vms").innerHTML = vmsCache.map((v) => {
    const n = esc(v.name);
    const b = (a) => `<button data-a="${a}" data-n="${n}">${a}</button>`;
    return `<tr data-vm="${n}"><td><a href="#/vm/${encodeURIComponent(v.name)}">${n}</a></td>
      <td class="state ${esc(v.state)}" title="${esc(v.last_exit || "")}">${esc(v.state)}</td>
      <td>${v.vcpus}</td><td>${v.memory_mib} MiB</td><td>${v.uptime_s == null ? "-" : Math.round(v.uptime_s) + " s"}</td>
      <td>${v.pid == null ? "-" : v.pid}</td><td>${ACTIONS.map(b).join("")}</td></tr>`;
  }).join("");
  if (current) {
    const v = vmsCache.find((x) => x.name === current);
    $("vm-state").textContent = v ? "(" + v.state + ")" : "(undefined)";
    $("vm-state").className = v ? v.state : "";
  }
}
document.addEventListener("click", (e) => {
  const a = e.target.dataset && e.target.dataset.a, n = e.target.dataset && e.target.dataset.n;
  if (!a) return;
  say(a + " " + n + " ...", false);
  call("POST", `/api/vms/${encodeURIComponent(n)}/${a}`).then(() => { if (current === n && a === "start") openConsole(n); });
});

// ---- the create form ----
const form = $("create");
form.boot.addEventListener("change", () => {
  document.querySelector(".boot-guest").hidden = form.boot.value !== "guest";
  document.querySelector(".boot-kernel").hidden = form.boot.value !== "kernel";
});
function addRow(where, html) {
  const d = document.createElement("div"); d.className = "row " + where; d.innerHTML = html + ' <button type="button" class="rm">remove</button>';
  d.querySelector(".rm").onclick = () => d.remove(); $(where).appendChild(d);
}
$("add-disk").onclick = () => addRow("disks", '<label>Disk image <input class="disk-path" placeholder="/path/to/disk.img" size="30"></label> <label><input type="checkbox" class="disk-ro"> read-only</label>');
$("add-nic").onclick = () => addRow("nics", '<label>NIC on tap <input class="nic-tap" placeholder="tap0" size="10"></label> <label>MAC <input class="nic-mac" placeholder="(optional)" size="17"></label>');
form.addEventListener("submit", async (e) => {
  e.preventDefault();
  form.querySelectorAll(".bad").forEach((x) => x.classList.remove("bad"));
  $("form-error").textContent = "";
  const f = new FormData(form);
  const disks = [...document.querySelectorAll("#disks .row")].map((r) => ({path: r.querySelector(".disk-path").value, ro: r.querySelector(".disk-ro").checked}));
  const nics = [...document.querySelectorAll("#nics .row")].map((r) => ({tap: r.querySelector(".nic-tap").value, mac: r.querySelector(".nic-mac").value}));
  const body = {name: f.get("name"), boot: f.get("boot"), workload: f.get("workload"), kernel: f.get("kernel"), initrd: f.get("initrd"),
    cmdline: f.get("cmdline"), cpus: f.get("cpus"), memory: f.get("memory"), disks, nics,
    autostart: f.get("autostart") === "on", restart_on_failure: f.get("restart_on_failure") === "on"};
  const r = await call("POST", "/api/vms", JSON.stringify(body));
  if (!r.ok) {
    $("form-error").textContent = r.body.error || "refused";
    const field = r.body.field || "";
    const m = field.match(/^(disks|nics)\.(\d+)\.(\w+)$/);
    let input = null;
    if (m) { const row = document.querySelectorAll(`#${m[1]} .row`)[+m[2]]; input = row && row.querySelector(m[1] === "disks" ? ".disk-path" : (m[3] === "mac" ? ".nic-mac" : ".nic-tap")); }
    else if (field && form[field]) input = form[field];
    if (input) { input.classList.add("bad"); input.focus(); }
  }
});

// ---- one VM: console and charts ----
let current = null, term = null, fit = null, sock = null, timer = null, samples = [];
function openConsole(name) {
  if (sock) { sock.onclose = null; sock.close(); sock = null; }
  if (!term) {
    term = new Terminal({convertEol: true, scrollback: 5000, fontSize: 13});
    fit = new FitAddon.FitAddon(); term.loadAddon(fit); term.open($("term"));
    term.onData((d) => { if (sock && sock.readyState === 1 && sock.writer) sock.send(d); });
  }
  fit.fit(); term.reset();
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const s = new WebSocket(`${proto}//${location.host}/ws/${encodeURIComponent(name)}/console`);
  s.binaryType = "arraybuffer"; sock = s;
  s.onmessage = (m) => {
    if (typeof m.data === "string") {
      const hello = JSON.parse(m.data); s.writer = hello.writer;
      $("console-mode").textContent = hello.writer ? "(read-write)" : "(read-only: another client holds the input)";
    } else term.write(new Uint8Array(m.data));
  };
  s.onclose = () => { $("console-mode").textContent = "(closed: the VM does not run)"; };
}
function showVm(name) {
  current = name; samples = [];
  $("vm-name").textContent = name;
  $("vm-actions").innerHTML = ACTIONS.filter((a) => a !== "undefine").map((a) => `<button data-a="${a}" data-n="${esc(name)}">${a}</button>`).join("");
  openConsole(name);
  clearInterval(timer); timer = setInterval(sample, 1000); sample();
}
async function sample() {
  if (!current) return;
  const r = await fetch(`/api/vms/${encodeURIComponent(current)}/metrics`);
  if (!r.ok) return;
  const m = await r.json();
  samples.push(m); if (samples.length > 61) samples.shift();
  $("console-in").textContent = m.console_input_bytes == null ? "-" : m.console_input_bytes;
  draw();
}
// Rates between successive samples: {name: [values]}.
function rates(pick) {
  const out = {};
  for (let i = 1; i < samples.length; i++) {
    const a = samples[i - 1], b = samples[i], dt = (b.t_ms - a.t_ms) / 1000;
    if (dt <= 0) continue;
    const pa = pick(a), pb = pick(b);
    for (const k of Object.keys(pb)) {
      (out[k] = out[k] || []).push(Math.max(0, (pb[k] - (pa[k] || 0)) / dt));
    }
  }
  return out;
}
function devices(m, counters) {
  const o = {};
  for (const [id, c] of Object.entries(m.devices || {})) for (const k of counters) if (c[k] != null) o[id + " " + k] = c[k];
  return o;
}
function draw() {
  chart($("chart-exits"), rates((m) => m.exits || {}));
  chart($("chart-disk"), rates((m) => devices(m, ["requests"])));
  chart($("chart-net"), rates((m) => devices(m, ["rx_bytes", "tx_bytes"])));
}
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];
function fmt(v) { return v >= 1e6 ? (v / 1e6).toFixed(1) + "M" : v >= 1e3 ? (v / 1e3).toFixed(1) + "k" : v >= 10 ? v.toFixed(0) : +v.toPrecision(2) + ""; }
// A line chart of the last 60 s, drawn by hand on a canvas.
function chart(c, series) {
  const g = c.getContext("2d"), W = c.width, H = c.height, L = 48, B = 18, T = 8;
  g.clearRect(0, 0, W, H); g.font = "11px sans-serif";
  const names = Object.keys(series).filter((k) => series[k].some((v) => v > 0) || Object.keys(series).length <= 4);
  const max = Math.max(1, ...names.flatMap((k) => series[k]));
  g.strokeStyle = "#ccc"; g.fillStyle = "#555";
  for (let i = 0; i <= 4; i++) {
    const y = T + (H - T - B) * i / 4; g.beginPath(); g.moveTo(L, y); g.lineTo(W - 4, y); g.stroke();
    g.fillText(fmt(max * (4 - i) / 4), 2, y + 4);
  }
  g.fillText("60 s", L, H - 4); g.fillText("now", W - 26, H - 4);
  let points = 0;
  names.forEach((k, i) => {
    const v = series[k]; g.strokeStyle = COLORS[i % COLORS.length]; g.lineWidth = 1.5; g.beginPath();
    v.forEach((y, j) => {
      const px = L + (W - 4 - L) * (60 - (v.length - 1 - j)) / 60, py = T + (H - T - B) * (1 - y / max);
      j ? g.lineTo(px, py) : g.moveTo(px, py); points++;
    });
    g.stroke(); g.fillStyle = g.strokeStyle; g.fillText(k, L + 6 + (i % 3) * 130, T + 12 + Math.floor(i / 3) * 12);
  });
  if (!names.length) { g.fillStyle = "#888"; g.fillText("no such device", L + 8, H / 2); }
  c.dataset.points = points; c.dataset.max = max;
}

// ---- bench results ----
async function showBench() {
  const r = await fetch("/api/bench");
  const j = await r.json().catch(() => ({}));
  if (!r.ok) { $("bench").innerHTML = `<p class="err">${esc(j.error || r.statusText)}</p>`; return; }
  if (!j.length) { $("bench").innerHTML = "<p>No results.json in the results folder.</p>"; return; }
  $("bench").innerHTML = j.map((s) => {
    if (s.error) return `<div class="bench-set"><h3>${esc(s.name)}</h3><p class="err">${esc(s.error)}</p></div>`;
    const envs = [...new Set(s.workloads.flatMap((w) => Object.keys(w.medians)))];
    const rows = s.workloads.map((w) => `<tr><td>${esc(w.table || "")}</td><td>${esc(w.label || w.id)}</td><td>${esc(w.unit || "")}</td>` +
      envs.map((e) => `<td class="num">${w.medians[e] == null ? "-" : Number(w.medians[e]).toPrecision(4)}</td>`).join("") + "</tr>").join("");
    const when = s.started_unix ? new Date(s.started_unix * 1000).toISOString() : "";
    const base = `/bench/${encodeURIComponent(s.name)}/`;
    return `<div class="bench-set"><h3>${esc(s.name === "_" ? "results" : s.name)} <small>${esc(when)} · runs ${esc(s.runs ?? "-")} · ${esc(s.wall_s == null ? "" : Math.round(s.wall_s) + " s")}</small></h3>
      <p>Medians (lower is better unless marked). <a href="${base}results.json">results.json</a></p>
      <table><thead><tr><th>Table</th><th>Workload</th><th>Unit</th>${envs.map((e) => `<th>${esc(e)}</th>`).join("")}</tr></thead><tbody>${rows}</tbody></table>
      ${s.charts.map((c) => `<div><img alt="${esc(c)}" src="${base}${encodeURIComponent(c)}"></div>`).join("")}</div>`;
  }).join("");
}

// ---- pages ----
function route() {
  const h = location.hash || "#/";
  const vm = h.match(/^#\/vm\/(.+)$/);
  $("page-vms").hidden = !!vm || h === "#/bench";
  $("page-vm").hidden = !vm; $("page-bench").hidden = h !== "#/bench";
  if (vm) showVm(decodeURIComponent(vm[1]));
  else { current = null; clearInterval(timer); if (sock) { sock.onclose = null; sock.close(); sock = null; } }
  if (h === "#/bench") showBench();
}
window.addEventListener("hashchange", route);
window.addEventListener("resize", () => fit && fit.fit());
// The token goes from the address bar once the cookie holds it.
if (location.search.includes("token=")) history.replaceState(null, "", location.pathname + location.hash);
route(); refresh(); setInterval(refresh, 1000);
