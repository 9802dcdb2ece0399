// Pancake live view: each tile shows a JPEG, then acks with "read_frame" (protocol: recorder/web/handlers.py).
"use strict";

(function () {
  const HEADER_BYTES = 24; // u64 seq, f64 capture wall, f32 age at send, f32 hold
  const ACK = "read_frame";
  const LOGGED_OUT = 1008; // close code: recorder/web/live.py LOGGED_OUT
  // A stall (no frame for STALE_MS after asking) is met first by asking again — an ack is
  // idempotent, so this costs nothing if the server is merely slow — then, if still nothing
  // by RECONNECT_MS, by a new socket: a connection stuck in a proxy or a dead Wi-Fi path never
  // reports itself closed, and the page must not show a frozen picture for good.
  const STALE_MS = 3000;
  const RECONNECT_MS = 8000;
  const BADGES = { live: "LIVE", delay: "DELAY", error: "ERROR", offline: "OFFLINE" };
  const multi = document.body.classList.contains("multi");
  const xsrf = (document.querySelector('meta[name="xsrf"]') || {}).content || "";
  let newestWall = 0; // capture time of the newest frame any tile showed (the header's clock)

  function pad(n) { return String(n).padStart(2, "0"); }

  function showTime(wallSeconds) {
    if (wallSeconds < newestWall) return;
    newestWall = wallSeconds;
    const d = new Date(wallSeconds * 1000);
    document.getElementById("clock").textContent =
      `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function ageText(seconds) {
    if (seconds < 10) return `${seconds.toFixed(1)} s`;
    if (seconds < 120) return `${Math.round(seconds)} s`;
    if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
    return `${Math.round(seconds / 3600)} h`;
  }

  async function loggedOut() {
    // A refused websocket tells the page nothing; /status says whether the session ended.
    try {
      const r = await fetch("/status", { cache: "no-store", credentials: "same-origin" });
      return r.status === 401 || r.status === 403;
    } catch (e) {
      return false;
    }
  }

  // One camera's picture, badge and pills, on its own websocket. `root` holds the elements
  // (by class); `view` is "grid" (a tile: the server paces it to its share) or "" (full rate).
  function Tile(root, name) {
    const q = (cls) => root.querySelector("." + cls);
    const img = q("frame");
    const conn = q("conn");
    const badge = q("badge");
    let ws = null;
    let wanted = false; // should this tile stream now
    let view = "";
    let shownUrl = null;
    let ackAt = 0; // performance.now() of our last ack (or of the socket opening)
    let frames = 0;
    let recent = []; // performance.now() of recently shown frames, for the FPS
    let backoff = 500;
    let lastFrameAt = 0; // performance.now() of the last frame shown
    let lastAge = 0; // the last frame's age when shown, seconds
    let openedAt = 0; // performance.now() when the socket opened
    let reacked = false; // this stall has had its second ack
    let health = "offline";
    let retry = null;

    function setConn(text, ok, stale) {
      conn.textContent = text;
      conn.classList.toggle("ok", !!ok);
      conn.classList.toggle("stale", !!stale);
    }

    function frameAge() {
      return lastFrameAt ? lastAge + (performance.now() - lastFrameAt) / 1000 : null;
    }

    function showBadge() {
      const age = frameAge();
      badge.className = "badge " + health;
      badge.textContent = BADGES[health] + (age === null ? "" : " " + ageText(age));
      root.dataset.health = health;
    }

    function showFps() {
      const now = performance.now();
      recent = recent.filter((t) => now - t < 2000);
      const fps = recent.length > 1 ? (recent.length - 1) * 1000 / (recent[recent.length - 1] - recent[0]) : 0;
      const el = q("fps");
      if (el) el.textContent = fps.toFixed(1);
    }

    function pill(cls, on, onText, offText) {
      const el = q(cls);
      if (!el) return;
      el.classList.toggle("on", on);
      el.classList.toggle("off", !on);
      if (onText) el.textContent = on ? onText : offText;
    }

    function onStatus(msg) {
      if (msg.type !== "status") return;
      pill("detect", !!msg.detection, "Detection", "No detection");
      pill("rec", msg.rec > 0);
      if (q("viewers")) q("viewers").textContent = msg.viewers;
      if (q("capfps")) q("capfps").textContent = Number(msg.capture_fps).toFixed(1);
      if (msg.source && q("source")) q("source").textContent = msg.source;
      if (msg.health in BADGES) health = msg.health;
      const armed = q("armed");
      if (armed && typeof msg.armed === "boolean" && document.activeElement !== armed) armed.checked = msg.armed;
      const cont = q("continuous");
      if (cont && !cont.disabled && typeof msg.continuous === "boolean" && document.activeElement !== cont) {
        cont.checked = msg.continuous;
      }
      root.classList.toggle("disarmed", msg.armed === false);
      if (health === "offline" && (!lastFrameAt || performance.now() - lastFrameAt > STALE_MS)) {
        setConn("camera offline", false, true);
      }
      showBadge();
    }

    async function onFrame(buf) {
      const receivedAt = performance.now();
      if (buf.byteLength <= HEADER_BYTES) { ack(); return; }
      const head = new DataView(buf, 0, HEADER_BYTES);
      const seq = Number(head.getBigUint64(0));
      const wall = head.getFloat64(8);
      const ageAtSend = head.getFloat32(16);
      const hold = head.getFloat32(20);
      const url = URL.createObjectURL(new Blob([new Uint8Array(buf, HEADER_BYTES)], { type: "image/jpeg" }));
      img.src = url;
      try {
        await img.decode();
      } catch (e) {
        // A frame that does not decode is skipped; the next one will replace it.
      }
      if (shownUrl) URL.revokeObjectURL(shownUrl);
      shownUrl = url;
      const shownAt = performance.now();
      const roundTrip = Math.max(0, (receivedAt - ackAt) / 1000 - hold);
      const age = ageAtSend + roundTrip / 2 + (shownAt - receivedAt) / 1000;
      frames += 1;
      recent.push(shownAt);
      img.dataset.seq = String(seq);
      root.dataset.frames = String(frames);
      if (q("frames")) q("frames").textContent = frames;
      if (q("age")) q("age").textContent = Math.round(age * 1000);
      showTime(wall);
      showFps();
      lastFrameAt = shownAt;
      lastAge = age;
      reacked = false;
      backoff = 500;
      setConn("live", true);
      showBadge();
      ack();
    }

    function ack() {
      if (ws && ws.readyState === WebSocket.OPEN) {
        ackAt = performance.now();
        ws.send(ACK);
      }
    }

    function connect() {
      retry = null;
      if (!wanted) return;
      const scheme = location.protocol === "https:" ? "wss:" : "ws:";
      const query = multi ? `?camera=${encodeURIComponent(name)}${view ? "&view=" + view : ""}` : "";
      ws = new WebSocket(`${scheme}//${location.host}/websocket${query}`);
      ws.binaryType = "arraybuffer";
      ws.onopen = () => {
        // backoff is reset by a frame, not here: a socket that opens but stalls again must not
        // be reopened at full speed forever.
        ackAt = openedAt = performance.now(); // opening the socket is the first ack
        reacked = false;
        setConn("waiting for the camera…", false);
      };
      ws.onmessage = (ev) => {
        if (typeof ev.data === "string") {
          try { onStatus(JSON.parse(ev.data)); } catch (e) { /* not ours: ignore */ }
        } else {
          onFrame(ev.data);
        }
      };
      const socket = ws;
      ws.onclose = async (ev) => {
        if (ws !== socket) return; // an older socket we gave up on: its successor is running
        ws = null;
        // 1008: the server closed it because this session logged out (in this tab or another).
        if (ev.code === LOGGED_OUT || await loggedOut()) {
          location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
          return;
        }
        if (!wanted) return;
        setConn("reconnecting…", false);
        retry = setTimeout(connect, backoff);
        backoff = Math.min(backoff * 2, 8000);
      };
    }

    function drop() {
      if (retry) { clearTimeout(retry); retry = null; }
      if (!ws) return;
      const old = ws;
      ws = null;
      old.onclose = null;
      old.onmessage = null;
      old.close();
    }

    // Stream (in `newView`) or not: a tile off screen, in a hidden tab, or behind an enlarged
    // camera closes its socket, so the server encodes nothing for it.
    function want(on, newView) {
      const changed = on !== wanted || (on && newView !== view);
      wanted = on;
      view = newView;
      if (!changed) return;
      drop();
      if (on) {
        backoff = 500;
        connect();
      } else {
        setConn("paused", false);
      }
    }

    function tick() {
      showFps();
      showBadge();
      if (!ws || ws.readyState !== WebSocket.OPEN) return;
      // Frames stop coming while the socket stays open: say so, ask again, then reconnect.
      const quiet = performance.now() - Math.max(lastFrameAt, openedAt);
      if (quiet <= STALE_MS) return;
      if (health === "offline" && multi) {
        // The camera itself is down (the server says so): the socket is fine, keep waiting.
        setConn("camera offline", false, true);
        return;
      }
      if (quiet > RECONNECT_MS) {
        setConn(`no picture for ${Math.round(quiet / 1000)} s: reconnecting…`, false, true);
        drop();
        retry = setTimeout(connect, backoff);
        backoff = Math.min(backoff * 2, 8000);
        return;
      }
      setConn(`no picture for ${Math.round(quiet / 1000)} s: asking again`, false, true);
      if (!reacked) {
        reacked = true;
        ack();
      }
    }

    return { name, root, want, tick, close: drop };
  }

  // ---- the switches of a tile's menu: POST /api/cameras/NAME with the XSRF token
  async function setSwitch(tile, key, box) {
    const err = tile.root.querySelector(".menu-error");
    err.textContent = "";
    try {
      const r = await fetch(`/api/cameras/${encodeURIComponent(tile.name)}`, {
        method: "POST", credentials: "same-origin", cache: "no-store",
        headers: { "Content-Type": "application/json", "X-XSRFToken": xsrf },
        body: JSON.stringify({ [key]: box.checked }),
      });
      if (!r.ok) {
        const body = await r.json().catch(() => ({}));
        throw new Error(body.error || `HTTP ${r.status}`);
      }
    } catch (e) {
      box.checked = !box.checked;
      err.textContent = String(e.message || e);
    }
  }

  const tiles = [];
  if (!multi) {
    tiles.push(Tile(document.body, document.body.dataset.camera));
    tiles[0].want(true, "");
  } else {
    const grid = document.getElementById("grid");
    const visible = new Set();
    let enlarged = document.body.dataset.enlarged || "";
    for (const root of grid.querySelectorAll(".tile")) {
      const tile = Tile(root, root.dataset.camera);
      tiles.push(tile);
      root.addEventListener("click", (ev) => {
        if (ev.target.closest(".menu")) return; // the switches, not the picture
        if (!enlarged) enlarge(tile.name, true);
      });
      root.addEventListener("keydown", (ev) => {
        if (ev.key === "Enter" && !enlarged && !ev.target.closest(".menu")) enlarge(tile.name, true);
      });
      for (const key of ["armed", "continuous"]) {
        const box = root.querySelector("." + key);
        box.addEventListener("change", () => setSwitch(tile, key, box));
      }
    }

    function apply() {
      document.body.classList.toggle("enlarged", !!enlarged);
      document.body.dataset.enlarged = enlarged;
      const hidden = document.visibilityState === "hidden";
      for (const tile of tiles) {
        const big = tile.name === enlarged;
        tile.root.classList.toggle("big", big);
        const on = !hidden && (enlarged ? big : visible.has(tile.name));
        tile.want(on, enlarged ? "" : "grid");
      }
    }

    function enlarge(name, push) {
      enlarged = name;
      if (push) history.pushState({ camera: name }, "", name ? `/?camera=${encodeURIComponent(name)}` : "/");
      apply();
    }

    function back() {
      if (!enlarged) return;
      if (history.state && history.state.camera) {
        history.back(); // popstate does the rest
      } else {
        enlarge("", false);
        history.replaceState(null, "", "/");
      }
    }

    window.addEventListener("popstate", () => {
      enlarged = new URLSearchParams(location.search).get("camera") || "";
      if (!tiles.some((t) => t.name === enlarged)) enlarged = "";
      apply();
    });
    document.addEventListener("keydown", (ev) => { if (ev.key === "Escape") back(); });
    document.getElementById("back").addEventListener("click", back);
    document.addEventListener("visibilitychange", apply);
    const seen = new IntersectionObserver((entries) => {
      for (const e of entries) {
        const name = e.target.dataset.camera;
        if (e.isIntersecting) visible.add(name); else visible.delete(name);
      }
      apply();
    }, { threshold: 0.01 });
    for (const tile of tiles) seen.observe(tile.root);
    apply();
  }

  const timer = setInterval(() => { for (const t of tiles) t.tick(); }, 1000);
  window.addEventListener("pagehide", () => { clearInterval(timer); for (const t of tiles) t.close(); });
})();
