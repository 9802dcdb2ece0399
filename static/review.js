// Pancake's review pages: the events list (with the log) and a day's recordings on a timeline.
"use strict";

const $ = (id) => document.getElementById(id);
const page = document.body.dataset.page;
const cameras = JSON.parse(document.body.dataset.cameras || "[]");

// The XSRF token comes in the page (its cookie is HttpOnly, out of a script's reach).
function xsrf() { return document.body.dataset.xsrf || ""; }

async function api(url, options) {
  const r = await fetch(url, Object.assign({ credentials: "same-origin" }, options || {}));
  if (r.status === 401) { location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search); throw new Error("login"); }
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

function post(url, fields) {
  const data = new URLSearchParams(fields || {});
  data.set("_xsrf", xsrf());
  return api(url, { method: "POST", body: data });
}

function postJSON(url, body) {
  return api(url, {
    method: "POST", body: JSON.stringify(body || {}),
    headers: { "Content-Type": "application/json", "X-XSRFToken": xsrf() },
  });
}

function del(url) {
  return api(url, { method: "DELETE", headers: { "X-XSRFToken": xsrf() } });
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function chip(word) {
  const c = el("span", "chip", word);
  c.dataset.word = word;
  return c;
}

function hms(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const pad = (n) => String(n).padStart(2, "0");
  return pad(Math.floor(s / 3600)) + ":" + pad(Math.floor(s / 60) % 60) + ":" + pad(s % 60);
}

function fillCameras(select, chosen) {
  for (const name of cameras) {
    const o = el("option", "", name);
    o.value = name;
    if (name === chosen) o.selected = true;
    select.append(o);
  }
}

function setQuery(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v) q.set(k, v);
  history.replaceState(null, "", location.pathname + (q.toString() ? "?" + q : ""));
}

// ------------------------------------------------------------------ events

function eventsPage() {
  const url = new URLSearchParams(location.search);
  const camera = $("camera"), q = $("q"), day = $("day");
  fillCameras(camera, url.get("camera") || "");
  q.value = url.get("label") || url.get("q") || "";
  day.value = url.get("day") || "";
  let next = null, loading = false, generation = 0;
  const list = $("events");

  function card(ev) {
    const c = el("button", "card");
    c.type = "button";
    c.dataset.id = ev.id;
    const pic = el("div", "thumb");
    if (ev.thumbnail) {
      const img = el("img");
      img.loading = "lazy";
      img.alt = "snapshot";
      img.src = ev.thumbnail;
      pic.append(img);
    }
    if (ev.kept) pic.append(el("span", "pin", "kept"));
    const info = el("div", "info");
    const top = el("div", "top");
    top.append(el("b", "", ev.camera), el("span", "dim", ev.when.replace("T", " ")));
    const words = el("div", "chips");
    for (const w of [...ev.names, ...ev.labels]) words.append(chip(w));
    const state = el("div", "state dim");
    state.append(el("span", "", ev.duration === null ? "on now" : ev.duration + " s"));
    if (ev.converted) state.append(el("span", "ok", "mp4"));
    if (ev.uploaded) state.append(el("span", "ok", "uploaded" + (ev.uploaded > 1 ? " ×" + ev.uploaded : "")));
    if (ev.alerted.length) state.append(el("span", "ok", "alerted"));
    info.append(top, words, state);
    c.append(pic, info);
    c.addEventListener("click", () => open(ev, c));
    return c;
  }

  async function load(reset) {
    if (loading && !reset) return;
    const mine = reset ? ++generation : generation;
    loading = true;
    if (reset) { list.textContent = ""; next = null; }
    const params = { camera: camera.value, label: q.value.trim(), day: day.value };
    setQuery(params);
    if (!reset && next) params.before = next;
    try {
      const body = await api("/api/events?" + new URLSearchParams(params));
      if (mine !== generation) return;
      for (const ev of body.events) list.append(card(ev));
      next = body.next;
      $("more").hidden = !next;
      $("empty").hidden = list.children.length > 0;
    } finally {
      if (mine === generation) loading = false;
    }
  }

  const dialog = $("player"), video = $("p-video");
  let current = null;
  function open(ev, node) {
    current = { ev, node };
    $("p-title").textContent = ev.camera;
    $("p-when").textContent = " " + ev.when.replace("T", " ") + (ev.duration !== null ? " · " + ev.duration + " s" : "");
    const chips = $("p-chips");
    chips.textContent = "";
    for (const w of [...ev.names, ...ev.labels]) chips.append(chip(w));
    showFaces(ev);
    video.poster = ev.snapshot || "";
    $("p-none").hidden = !!ev.video;
    video.hidden = !ev.video;
    $("p-download").hidden = !ev.video;
    $("p-keep").hidden = !ev.clip;
    $("p-keep").textContent = ev.kept ? "Release" : "Keep";
    if (ev.video) {
      video.src = ev.video;
      $("p-download").href = ev.video + "?download=1";
      video.play().catch(() => {});
    } else {
      video.removeAttribute("src");
    }
    dialog.showModal();
  }
  // The faces the event saw: each crop with what it was taken for, named or corrected here
  // ("This is…" enrols it; "Not NAME" drops it). Names are only ever set as text.
  let facesFor = 0;
  function said(f) {
    if (f.name !== "unknown") return f.name;
    return f.probable ? f.probable + "?" : "unknown";
  }
  function faceMsg(text, bad) {
    const m = $("p-face-msg");
    m.textContent = text;
    m.classList.toggle("bad", !!bad);
  }
  let facesOf = null;
  async function showFaces(ev) {
    const mine = ++facesFor;
    const box = $("p-faces"), list = $("p-face-list");
    if (facesOf !== ev.id) {
      // Another event: nothing of the last one shows while this one's faces load (a
      // correction re-reads the same event's in place, without the dialog jumping).
      facesOf = ev.id;
      box.hidden = true;
      list.textContent = "";
      faceMsg("");
    }
    let body;
    try {
      body = await api("/api/events/" + ev.id + "/faces");
    } catch (err) {
      if (mine === facesFor) { box.hidden = false; faceMsg("The faces cannot be read: " + err.message, true); }
      return;
    }
    if (mine !== facesFor) return;
    const people = $("p-people");
    people.textContent = "";
    for (const name of body.people) { const o = el("option"); o.value = name; people.append(o); }
    list.replaceChildren(...body.faces.map((f) => faceItem(ev, f)));
    box.hidden = !body.faces.length;
  }
  function faceItem(ev, f) {
    const li = $("face-t").content.firstElementChild.cloneNode(true);
    li.dataset.index = f.index;
    const img = li.querySelector(".crop");
    if (f.crop) { img.src = f.crop; img.alt = "face " + (f.index + 1); } else img.hidden = true;
    const name = said(f);
    li.querySelector(".fname").textContent = name;
    li.dataset.name = name;
    li.querySelector(".fnote").textContent = f.named ? "named here" : (f.probable && f.name === "unknown" ? "probable match" : "");
    const form = li.querySelector(".fname-form"), input = li.querySelector(".fname-in");
    input.setAttribute("aria-label", "name of face " + (f.index + 1));
    if (!f.enrol) {
      form.replaceWith(el("span", "dim small", "too small to name"));
    } else {
      form.addEventListener("submit", (e) => {
        e.preventDefault();
        const to = input.value.trim();
        if (!to) { input.focus(); return; }
        correct(ev, f, li, "/api/events/" + ev.id + "/faces/" + f.index, { name: to });
      });
    }
    const not = li.querySelector(".fnot");
    if (name === "unknown") not.remove();
    else {
      not.textContent = "Not " + name.replace(/\?$/, "");
      not.addEventListener("click", () => correct(ev, f, li, "/api/events/" + ev.id + "/faces/" + f.index + "/drop", {}));
    }
    return li;
  }
  async function correct(ev, f, li, url, body) {
    for (const b of li.querySelectorAll("button")) b.disabled = true;
    try {
      const done = await postJSON(url, body);
      ev.names = done.names;
      const chips = $("p-chips");
      chips.textContent = "";
      for (const w of [...ev.names, ...ev.labels]) chips.append(chip(w));
      if (current && current.ev === ev) current.node.replaceWith(current.node = card(ev));
      faceMsg(done.face.name === "unknown" ? "Face " + (f.index + 1) + " is nobody known now."
        : "Face " + (f.index + 1) + " is " + done.face.name + ": added to their faces.");
      await showFaces(ev);
    } catch (err) {
      faceMsg(err.message, true);
      for (const b of li.querySelectorAll("button")) b.disabled = false;
    }
  }
  function close() {
    facesFor++;
    facesOf = null;
    video.pause();
    video.removeAttribute("src");
    video.load();
    dialog.close();
  }
  $("p-close").addEventListener("click", close);
  dialog.addEventListener("cancel", (e) => { e.preventDefault(); close(); });
  $("p-keep").addEventListener("click", async () => {
    const { ev } = current;
    const body = await post("/api/events/" + ev.id + "/keep", { kept: ev.kept ? "0" : "1" });
    ev.kept = body.kept;
    $("p-keep").textContent = ev.kept ? "Release" : "Keep";
    current.node.replaceWith(current.node = card(ev));
  });
  $("p-delete").addEventListener("click", async () => {
    const { ev, node } = current;
    if (!confirm("Delete this event's clip and snapshots? This cannot be undone.")) return;
    try {
      await del("/api/events/" + ev.id);
      node.remove();
      close();
    } catch (err) {
      alert(err.message);
    }
  });

  let timer = null;
  for (const input of [camera, day]) input.addEventListener("change", () => load(true));
  q.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(() => load(true), 300); });
  $("filters").addEventListener("submit", (e) => { e.preventDefault(); load(true); });
  $("more").addEventListener("click", () => load(false));
  new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting) && next) load(false);
  }).observe($("more"));

  // The log: the newest lines first, searchable.
  async function loadLog() {
    const body = await api("/api/log?" + new URLSearchParams({ q: q.value.trim() }));
    const ol = $("lines");
    ol.textContent = "";
    for (const line of body.lines.reverse()) {
      const li = el("li", "line " + line.kind);
      li.append(el("time", "dim", line.when.replace("T", " ")), el("b", "", line.camera || ""),
                el("span", "kind", line.kind), el("span", "", line.text));
      ol.append(li);
    }
  }
  function show(logView) {
    $("show-log").classList.toggle("on", logView);
    $("show-events").classList.toggle("on", !logView);
    $("log").hidden = !logView;
    list.hidden = logView;
    $("more").hidden = logView || !next;
    $("empty").hidden = logView || list.children.length > 0;
    if (logView) loadLog();
  }
  $("show-log").addEventListener("click", () => show(true));
  $("show-events").addEventListener("click", () => show(false));
  q.addEventListener("input", () => { if (!$("log").hidden) loadLog(); });
  load(true);
}

// ------------------------------------------------------------------ recordings

function recordingsPage() {
  const url = new URLSearchParams(location.search);
  const camera = $("camera"), day = $("day"), video = $("video"), line = $("timeline");
  fillCameras(camera, url.get("camera") || "");
  day.value = url.get("day") || new Date().toLocaleDateString("sv-SE");
  let data = null, playing = null, range = null;
  // The part of the day the timeline shows: all of it, or a zoomed window around a moment.
  let view = null, zoom = 86400;

  function frac(t) { return (t - view.start) / (view.end - view.start); }
  function timeAt(x) {
    const box = line.getBoundingClientRect();
    const f = Math.min(1, Math.max(0, (x - box.left) / box.width));
    return view.start + f * (view.end - view.start);
  }
  function setView(center) {
    const span = Math.min(zoom, data.end - data.start);
    let start = Math.max(data.start, center - span / 2);
    start = Math.min(start, data.end - span);
    view = { start, end: start + span };
    for (const b of document.querySelectorAll("#zoom button")) b.classList.toggle("on", Number(b.dataset.span) === zoom);
    draw();
  }
  function ticks() {
    const hours = line.querySelector(".hours");
    hours.textContent = "";
    const span = view.end - view.start;
    const step = span > 43200 ? 10800 : span > 7200 ? 1800 : span > 1800 ? 600 : 300;
    const first = Math.ceil((view.start - data.start) / step) * step + data.start;
    for (let t = first; t <= view.end + 1; t += step) {
      const d = new Date(t * 1000);
      const tick = el("span", "", d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false }));
      tick.style.left = (100 * frac(t)) + "%";
      hours.append(tick);
    }
  }
  function place(node, t0, t1) {
    node.style.left = (100 * Math.max(0, frac(t0))) + "%";
    node.style.width = Math.max(0.15, 100 * (Math.min(1, frac(t1)) - Math.max(0, frac(t0)))) + "%";
  }
  function labelClass(ev) {
    if (ev.names.length) return "face";
    return ev.labels.includes("face") ? "face" : (ev.labels[0] || "detection").replace(/[^a-z]/g, "");
  }

  async function load() {
    setQuery({ camera: camera.value, day: day.value });
    data = await api("/api/recordings?" + new URLSearchParams({ camera: camera.value, day: day.value }));
    if (!camera.value && data.camera) {
      for (const o of camera.options) o.selected = o.value === data.camera;
    }
    $("dl-segment").hidden = true;
    $("dl-range").hidden = true;
    $("sel").hidden = true;
    $("cursor").hidden = true;
    playing = null;
    range = null;
    const last = data.recordings.length ? data.recordings[data.recordings.length - 1].end : data.start;
    setView(last);
  }

  function draw() {
    const spans = $("spans"), marks = $("marks");
    spans.textContent = "";
    marks.textContent = "";
    for (const r of data.recordings) {
      if (r.end < view.start || r.start > view.end) continue;
      const s = el("div", "span " + r.kind);
      s.title = r.name;
      place(s, r.start, r.end);
      spans.append(s);
    }
    const kinds = new Set();
    for (const ev of data.events) {
      kinds.add(labelClass(ev));
      const fall = ev.fall === null ? ev.rise + 1 : ev.fall;
      if (fall < view.start || ev.rise > view.end) continue;
      const m = el("div", "mark " + labelClass(ev));
      m.title = ev.when.slice(11) + " " + [...ev.names, ...ev.labels].join(", ");
      place(m, ev.rise, fall);
      marks.append(m);
    }
    const legend = $("legend");
    legend.textContent = "";
    legend.append(el("span", "key continuous", "recorded"), el("span", "key clip", "clip"));
    for (const k of kinds) legend.append(el("span", "key " + k, k));
    if (range) place($("sel"), range[0], range[1]);
    ticks();
  }

  // The continuous recording that holds t, else the next one after it (a gap is skipped).
  function recordingAt(t) {
    const recs = data.recordings.filter((r) => r.kind === "continuous");
    return recs.find((r) => r.start <= t && t < r.end) || recs.find((r) => r.start > t)
      || data.recordings.find((r) => r.start <= t && t < r.end) || null;
  }

  function play(t) {
    const rec = recordingAt(t);
    if (!rec) return;
    const offset = Math.max(0, t - rec.start);
    if (!playing || playing.id !== rec.id) {
      playing = rec;
      video.src = rec.video;
      $("file").textContent = rec.name;
      $("dl-segment").href = rec.video + "?download=1";
      $("dl-segment").hidden = false;
    }
    const seek = () => { video.currentTime = offset; video.play().catch(() => {}); };
    if (video.readyState >= 1 && playing.id === rec.id && video.src.endsWith(rec.video)) seek();
    else video.addEventListener("loadedmetadata", seek, { once: true });
  }

  function now() { return playing ? playing.start + video.currentTime : null; }

  video.addEventListener("timeupdate", () => {
    const t = now();
    if (t === null) return;
    $("at").textContent = new Date(t * 1000).toLocaleTimeString([], { hour12: false });
    const c = $("cursor");
    c.hidden = false;
    c.style.left = (100 * frac(t)) + "%";
    line.setAttribute("aria-valuenow", String(Math.round(t - data.start)));
    if (t < view.start || t > view.end) setView(t);
  });
  // Continuous playback: at a segment's end the next one starts where it begins.
  video.addEventListener("ended", () => {
    if (!playing) return;
    const after = data.recordings.filter((r) => r.kind === "continuous" && r.start >= playing.end - 1 && r.id !== playing.id);
    if (after.length) play(after[0].start);
  });

  let down = null;
  line.addEventListener("pointerdown", (e) => { if (data) { down = timeAt(e.clientX); line.setPointerCapture(e.pointerId); } });
  line.addEventListener("pointermove", (e) => {
    if (down === null) return;
    const t = timeAt(e.clientX);
    if (Math.abs(t - down) < 30) return;
    range = [Math.min(down, t), Math.max(down, t)];
    const sel = $("sel");
    sel.hidden = false;
    place(sel, range[0], range[1]);
  });
  line.addEventListener("pointerup", (e) => {
    if (down === null) return;
    const t = timeAt(e.clientX);
    if (Math.abs(t - down) < 30) {
      range = null;
      $("sel").hidden = true;
      $("dl-range").hidden = true;
      play(t);
    } else if (range) {
      const a = $("dl-range");
      a.href = "/media/cut.mp4?" + new URLSearchParams({ camera: data.camera, from: range[0].toFixed(0), to: range[1].toFixed(0), download: "1" });
      a.textContent = "Download " + hms(range[0] - data.start).slice(0, 5) + "–" + hms(range[1] - data.start).slice(0, 5);
      a.hidden = false;
      play(range[0]);
    }
    down = null;
  });
  document.addEventListener("keydown", (e) => {
    if (e.target instanceof HTMLInputElement || e.target instanceof HTMLSelectElement) return;
    if (e.key === " ") {
      e.preventDefault();
      if (video.paused) video.play().catch(() => {}); else video.pause();
    } else if (e.key === "ArrowLeft" || e.key === "ArrowRight") {
      const t = now();
      if (t === null) return;
      e.preventDefault();
      const to = t + (e.key === "ArrowLeft" ? -10 : 10);
      if (playing && to >= playing.start && to < playing.end) video.currentTime = to - playing.start;
      else play(to);
    }
  });
  function shift(days) {
    const d = new Date(day.value + "T12:00:00");
    d.setDate(d.getDate() + days);
    day.value = d.toLocaleDateString("sv-SE");
    load();
  }
  $("prev").addEventListener("click", () => shift(-1));
  $("next").addEventListener("click", () => shift(1));
  camera.addEventListener("change", load);
  day.addEventListener("change", load);
  for (const b of document.querySelectorAll("#zoom button")) {
    b.addEventListener("click", () => {
      zoom = Number(b.dataset.span);
      const t = now();
      setView(t !== null ? t : (range ? range[0] : (view.start + view.end) / 2));
    });
  }
  load();
}

if (page === "events") eventsPage();
else if (page === "recordings") recordingsPage();
