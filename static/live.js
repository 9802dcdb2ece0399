// Pancake live view: show each JPEG, then ack with "read_frame" (protocol: recorder/web/handlers.py).
"use strict";

(function () {
  const HEADER_BYTES = 24; // u64 seq, f64 capture wall, f32 age at send, f32 hold
  const ACK = "read_frame";
  const LOGGED_OUT = 1008; // close code: recorder/web/live.py LOGGED_OUT
  const $ = (id) => document.getElementById(id);
  const img = $("frame");
  const conn = $("conn");

  let ws = null;
  let shownUrl = null;
  let ackAt = 0; // performance.now() of our last ack (or of the socket opening)
  let frames = 0;
  let recent = []; // performance.now() of recently shown frames, for the FPS
  let backoff = 500;
  let fpsTimer = null;
  let lastFrameAt = 0; // performance.now() of the last frame shown
  let openedAt = 0; // performance.now() when the socket opened
  let reacked = false; // this stall has had its second ack
  // A stall (no frame for STALE_MS after asking) is met first by asking again — an ack is
  // idempotent, so this costs nothing if the server is merely slow — then, if still nothing
  // by RECONNECT_MS, by a new socket: a connection stuck in a proxy or a dead Wi-Fi path never
  // reports itself closed, and the page must not show a frozen picture for good.
  const STALE_MS = 3000;
  const RECONNECT_MS = 8000;

  function setConn(text, ok, stale) {
    conn.textContent = text;
    conn.classList.toggle("ok", !!ok);
    conn.classList.toggle("stale", !!stale);
  }

  function pad(n) { return String(n).padStart(2, "0"); }

  function showTime(wallSeconds) {
    const d = new Date(wallSeconds * 1000);
    $("clock").textContent = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function showFps() {
    const now = performance.now();
    recent = recent.filter((t) => now - t < 2000);
    const fps = recent.length > 1 ? (recent.length - 1) * 1000 / (recent[recent.length - 1] - recent[0]) : 0;
    $("fps").textContent = fps.toFixed(1);
  }

  function onStatus(msg) {
    if (msg.type !== "status") return;
    $("detect").classList.toggle("on", !!msg.detection);
    $("detect").classList.toggle("off", !msg.detection);
    $("detect").textContent = msg.detection ? "Detection" : "No detection";
    $("rec").classList.toggle("on", msg.rec > 0);
    $("rec").classList.toggle("off", !(msg.rec > 0));
    $("viewers").textContent = msg.viewers;
    $("capfps").textContent = Number(msg.capture_fps).toFixed(1);
    if (msg.source) $("source").textContent = msg.source;
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
    $("frames").textContent = frames;
    $("age").textContent = Math.round(age * 1000);
    showTime(wall);
    showFps();
    lastFrameAt = shownAt;
    reacked = false;
    backoff = 500;
    setConn("live", true);
    ack();
  }

  function ack() {
    if (ws && ws.readyState === WebSocket.OPEN) {
      ackAt = performance.now();
      ws.send(ACK);
    }
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

  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    ws = new WebSocket(`${scheme}//${location.host}/websocket`);
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
        location.href = "/login?next=" + encodeURIComponent(location.pathname);
        return;
      }
      setConn("reconnecting…", false);
      setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 8000);
    };
  }

  function tick() {
    showFps();
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    // Frames stop coming while the socket stays open: say so, ask again, then reconnect.
    const quiet = performance.now() - Math.max(lastFrameAt, openedAt);
    if (quiet <= STALE_MS) return;
    if (quiet > RECONNECT_MS) {
      setConn(`no picture for ${Math.round(quiet / 1000)} s: reconnecting…`, false, true);
      const stuck = ws;
      stuck.onclose = null; // its close may take long on a dead path: do not wait for it
      stuck.onmessage = null;
      stuck.close();
      ws = null;
      setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 8000);
      return;
    }
    setConn(`no picture for ${Math.round(quiet / 1000)} s: asking again`, false, true);
    if (!reacked) {
      reacked = true;
      ack();
    }
  }

  fpsTimer = setInterval(tick, 1000);
  window.addEventListener("pagehide", () => { clearInterval(fpsTimer); if (ws) ws.close(); });
  connect();
})();
