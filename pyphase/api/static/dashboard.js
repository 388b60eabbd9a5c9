// The node's dashboard: reads only what /openapi.json documents, once a second. No build step, no CDN.
"use strict";

const token = (location.hash.match(/token=([^&]+)/) || [])[1] || sessionStorage.getItem("phase-token");
if (token) sessionStorage.setItem("phase-token", token);

async function api(path) {
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const response = await fetch(path, { headers, cache: "no-store" });
  if (!response.ok) throw new Error(path + ": HTTP " + response.status);
  return response.json();
}

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => "&#" + c.charCodeAt(0) + ";");
const short = (s, n = 12) => (s ? String(s).replace(/^sha256:/, "").slice(0, n) : "");
const bytes = (n) => n >= 1 << 30 ? (n / (1 << 30)).toFixed(1) + " GiB" : n >= 1 << 20 ? (n >> 20) + " MiB"
  : n >= 1024 ? (n >> 10) + " KiB" : n + " B";
const ms = (us) => (us == null ? "" : (us / 1000).toFixed(us < 10000 ? 2 : 0) + " ms");
const rows = (pairs) => pairs.map(([k, v]) => `<div><span>${esc(k)}</span><b>${esc(v)}</b></div>`).join("");
const statusClass = (s) => (s === "ok" || s === "done" ? "ok" : s === "failed" || (s && s !== "queued"
  && s !== "running") ? "bad" : "");

function fill(id, items, render, columns) {
  const body = $(id).querySelector("tbody");
  body.innerHTML = items.length ? items.map(render).join("")
    : `<tr><td class="empty" colspan="${columns}">none yet</td></tr>`;
}

function showNode(node) {
  const c = node.capabilities;
  $("identity").innerHTML = `${esc(node.address)}<br>API ${esc(node.api)} · up ${node.uptime_s} s`;
  $("engine").innerHTML = rows([["runtime", c.runtime + " " + c.runtime_version],
    ["engines", (c.engines || []).join(", ")], ["executor", c.executor],
    ["arch", c.arch], ["cores", c.cores], ["protocol", c.protocol]]);
  $("load").innerHTML = rows([["running", c.load.running], ["queued", c.load.queued], ["workers", c.load.workers],
    ["cached modules", c.cached_modules], ["accepting", c.accepting ? "yes" : "no"]]);
  const m = c.max_limits;
  $("limits").innerHTML = rows([["memory", bytes(m.memory_bytes)], ["timeout", m.timeout_ms / 1000 + " s"],
    ["output", bytes(m.output_bytes)], ["module", bytes(m.module_bytes)], ["input", bytes(m.input_bytes)]]);
}

function plot(stats) {
  const canvas = $("plot");
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  canvas.width = w * ratio; canvas.height = h * ratio;
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  g.clearRect(0, 0, w, h);
  const b = stats.buckets, pad = { l: 44, r: 44, t: 10, b: 22 };
  const pw = w - pad.l - pad.r, ph = h - pad.t - pad.b;
  const maxJobs = 4 * Math.ceil(Math.max(1, ...b.map((x) => x.jobs)) / 4);   // whole jobs on every grid line
  const maxMs = Math.max(0.1, ...b.map((x) => x.p99_ms || 0));
  const x = (i) => pad.l + (i + 0.5) * pw / b.length;
  g.font = "11px system-ui"; g.fillStyle = "#6b7385"; g.strokeStyle = "#e3e6ec";
  for (let k = 0; k <= 4; k++) {
    const y = pad.t + ph * k / 4;
    g.beginPath(); g.moveTo(pad.l, y); g.lineTo(pad.l + pw, y); g.stroke();
    g.textAlign = "right"; g.fillText(Math.round(maxJobs * (4 - k) / 4), pad.l - 6, y + 4);
    g.textAlign = "left"; g.fillText((maxMs * (4 - k) / 4).toFixed(maxMs < 1 ? 2 : maxMs < 10 ? 1 : 0), pad.l + pw + 6, y + 4);
  }
  g.fillStyle = "#b9cdf3";
  const bw = Math.max(1, pw / b.length - 2);
  b.forEach((bucket, i) => {
    const bh = ph * bucket.jobs / maxJobs;
    g.fillRect(x(i) - bw / 2, pad.t + ph - bh, bw, bh);
  });
  for (const [key, color] of [["p50_ms", "#2f6fde"], ["p99_ms", "#d98a1f"]]) {
    g.strokeStyle = color; g.lineWidth = 2; g.beginPath();
    let drawing = false;
    b.forEach((bucket, i) => {
      if (bucket[key] == null) { drawing = false; return; }
      const y = pad.t + ph - ph * bucket[key] / maxMs;
      if (drawing) g.lineTo(x(i), y); else g.moveTo(x(i), y);
      drawing = true;
    });
    g.stroke(); g.lineWidth = 1;
    g.fillStyle = color;               // a dot per bucket, so a lone bucket shows too
    b.forEach((bucket, i) => {
      if (bucket[key] == null) return;
      g.beginPath(); g.arc(x(i), pad.t + ph - ph * bucket[key] / maxMs, 2.5, 0, 2 * Math.PI); g.fill();
    });
  }
  g.fillStyle = "#6b7385"; g.textAlign = "center";
  for (let i = 0; i < b.length; i += 12) {
    const t = new Date(b[i].t * 1000);
    g.fillText(t.toTimeString().slice(0, 5), x(i), h - 6);
  }
  const total = b.reduce((s, x) => s + x.jobs, 0);
  $("totals").innerHTML = rows([["jobs, 10 min", total], ["per second", (total / 600).toFixed(2)],
    ["last p50", (b.filter((x) => x.p50_ms != null).pop() || {}).p50_ms ?? "–"]]);
}

// The output of the newest running API job, as the node streams it (GET /v1/jobs/{id}/events, read with fetch
// so the token header goes along: EventSource cannot send one). Unverified until its "end" event says done.
let following = null;

async function follow(job) {
  following = job.id;
  const out = $("output");
  out.textContent = "";
  $("output-of").textContent = `job ${short(job.id)} · running (output unverified until it ends)`;
  $("output-of").className = "";
  const decoders = { stdout: new TextDecoder(), stderr: new TextDecoder() };
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const response = await fetch(`/v1/jobs/${encodeURIComponent(job.id)}/events`, { headers, cache: "no-store" });
  if (!response.ok || !response.body) throw new Error("events: HTTP " + response.status);
  const reader = response.body.getReader();
  const text = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += text.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const event = (block.match(/^event: (.*)$/m) || [])[1];
      const data = (block.match(/^data: (.*)$/m) || [])[1];
      if (!event || data === undefined) continue;
      const doc = JSON.parse(data);
      if (event === "end") {
        const ok = doc.state === "done";
        $("output-of").textContent = `job ${short(job.id)} · ` + (ok ? `${doc.status}, exit ${doc.exit_code}, receipt `
          + "verified ✓" : `failed: ${doc.error} (the output above is not to be trusted)`);
        $("output-of").className = ok ? "ok" : "bad";
      } else {
        const raw = Uint8Array.from(atob(doc.data), (c) => c.charCodeAt(0));
        const span = document.createElement("span");
        span.className = event;
        span.textContent = decoders[event].decode(raw, { stream: true });
        out.appendChild(span);
        out.scrollTop = out.scrollHeight;
      }
    }
  }
}

async function refresh() {
  try {
    const [node, jobs, peers, receipts, stats] = await Promise.all([api("/v1/node"), api("/v1/jobs?limit=20"),
      api("/v1/peers"), api("/v1/receipts?limit=20"), api("/v1/stats")]);
    showNode(node);
    fill("jobs", jobs.jobs, (j) => `<tr data-id="${esc(j.id)}"><td>${esc(j.submitted_at.slice(11, 19))}</td>
      <td class="mono">${esc(short(j.id))}</td><td>${esc(j.where)}</td>
      <td class="${statusClass(j.state)}">${esc(j.state)}</td><td class="${statusClass(j.status)}">${esc(j.status)}</td>
      <td>${esc(j.exit_code)}</td><td>${ms(j.wall_us)}</td><td class="mono">${esc(short(j.peer, 16))}</td></tr>`, 8);
    const live = jobs.jobs.find((j) => j.state === "running" || j.state === "queued");
    if (live && live.id !== following) follow(live).catch((e) => { $("output-of").textContent = e.message; });
    fill("peers", peers.peers, (p) => `<tr><td class="mono">${esc(p.name)}</td><td>${esc(p.source)}</td>
      <td class="mono">${esc(p.address ? p.address.split("@")[1] : "")}</td><td>${esc(p.last_seen)}</td></tr>`, 4);
    fill("receipts", receipts.receipts, (r) => `<tr data-job="${esc(r.job_id)}"><td>${esc(r.started_at.slice(11, 23))}</td>
      <td class="mono">${esc(short(r.job_id))}</td><td class="${statusClass(r.status)}">${esc(r.status)}</td>
      <td>${esc(r.exit_code)}</td><td>${ms(r.wall_us)}</td><td>${esc(r.fuel_used)}</td>
      <td class="mono">${esc(short(r.module))}</td><td class="mono">${esc(r.signature.slice(0, 16))}…</td></tr>`, 8);
    plot(stats);
    $("status").textContent = "live"; $("status").className = "pill up";
  } catch (error) {
    $("status").textContent = "unreachable: " + error.message; $("status").className = "pill down";
  }
}

refresh();
setInterval(refresh, 1000);
