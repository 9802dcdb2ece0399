// Pancake live view: each tile shows a picture (H.264 or JPEG), then acks with "read_frame" (protocol: recorder/web/handlers.py).
"use strict";

(function () {
  const HEADER_BYTES = 24; // u64 seq, f64 capture wall, f32 age at send, f32 hold
  const H264 = window.PancakeH264; // static/fmp4.js
  const PATH_NAMES = { webcodecs: "H.264 (WebCodecs)", mse: "H.264 (MSE)", jpeg: "JPEG" };
  // Units the decoder may hold before we stop acking: a slow device then skips to the next
  // IDR (the server's doing) instead of showing ever older pictures.
  const BACKLOG = 2;
  const ACK = "read_frame";
  const LOGGED_OUT = 1008; // close code: recorder/web/live.py LOGGED_OUT
  // A stall (no frame for STALE_MS after asking) is met first by asking again — an ack is
  // idempotent, so this costs nothing if the server is merely slow — then, if still nothing
  // by RECONNECT_MS, by a new socket: a connection stuck in a proxy or a dead Wi-Fi path never
  // reports itself closed, and the page must not show a frozen picture for good.
  const STALE_MS = 3000;
  const RECONNECT_MS = 8000;
  const BADGES = { live: "LIVE", delay: "DELAY", error: "ERROR", offline: "OFFLINE" };
  // The motion detector's boxes in the status (recorder/web/handlers.py OUTLINES_ON/OFF).
  const OUTLINES_ON = "outlines:on";
  const OUTLINES_OFF = "outlines:off";
  const OUTLINES_KEY = "pancake.outlines."; // + camera name, in localStorage: "1" or "0"
  // Boxes whose changed area reaches the bar in the picture's snapshot colour (pipeline.py
  // BOX_COLOUR); below the bar, dashed and paler: it moved, but not enough to count.
  const ABOVE_COLOUR = "rgb(255, 48, 0)";
  const BELOW_COLOUR = "rgba(255, 214, 10, .85)";
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

  function mseClass() {
    return window.ManagedMediaSource || window.MediaSource || null;
  }

  // The best path this browser has: WebCodecs (a secure context only: HTTPS or localhost),
  // else MSE, else JPEG. ?codec=jpeg or ?codec=mse forces one (tests, a misbehaving browser).
  function pickPath() {
    const forced = new URLSearchParams(location.search).get("codec");
    if (forced === "jpeg" || !H264) return "jpeg";
    const webcodecs = window.isSecureContext && typeof window.VideoDecoder === "function" &&
      typeof window.EncodedVideoChunk === "function";
    if (forced !== "mse" && webcodecs) return "webcodecs";
    if (mseClass()) return "mse";
    return "jpeg";
  }

  // The next path to try when `path` fails in this browser.
  function fallback(path) {
    if (path === "webcodecs" && mseClass()) return "mse";
    return "jpeg";
  }

  // WebCodecs: Annex B units straight into a VideoDecoder, each picture drawn on a canvas.
  // `shown(meta)` is called as each picture is drawn; `fail(why)` when this path cannot work.
  function WebCodecsPlayer(canvas, shown, fail) {
    const ctx = canvas.getContext("2d");
    let decoder = null;
    let codec = "";
    let needKey = true;
    let failures = 0;
    const pending = new Map(); // chunk timestamp (the unit's seq) -> meta

    function output(frame) {
      const meta = pending.get(frame.timestamp);
      pending.delete(frame.timestamp);
      if (canvas.width !== frame.displayWidth || canvas.height !== frame.displayHeight) {
        canvas.width = frame.displayWidth;
        canvas.height = frame.displayHeight;
      }
      ctx.drawImage(frame, 0, 0);
      frame.close();
      failures = 0;
      if (meta) shown(meta);
    }

    function error(e) {
      decoder = null;
      needKey = true;
      pending.clear();
      failures += 1;
      if (failures >= 3) fail(`decoder: ${e && e.message ? e.message : e}`);
    }

    function feed(bytes, meta) {
      const unit = H264.inspect(bytes);
      if (needKey && !unit.idr) return;
      try {
        if (unit.idr && unit.sps) {
          const c = H264.codecString(unit.sps);
          if (!decoder || decoder.state === "closed" || c !== codec) {
            if (decoder && decoder.state !== "closed") decoder.close();
            try {
              decoder = new VideoDecoder({ output, error });
              // No description: the units stay Annex B, SPS/PPS in band before each IDR.
              decoder.configure({ codec: c, optimizeForLatency: true });
            } catch (e) {
              // Refused outright (this codec, this browser): no use trying the next IDR.
              decoder = null;
              fail(`decoder: ${e && e.message ? e.message : e}`);
              return;
            }
            codec = c;
          }
        }
        if (!decoder) return;
        pending.set(meta.seq, meta);
        decoder.decode(new EncodedVideoChunk({ type: unit.idr ? "key" : "delta", timestamp: meta.seq, data: bytes }));
        needKey = false;
      } catch (e) {
        error(e);
      }
    }

    return {
      feed,
      backlog: () => (decoder ? decoder.decodeQueueSize : 0),
      reset() { needKey = true; pending.clear(); },
      close() { if (decoder && decoder.state !== "closed") decoder.close(); decoder = null; },
    };
  }

  // Media Source Extensions: each unit packed as one fragment of MP4 (static/fmp4.js), played
  // by a muted <video> kept at the live edge.
  function MsePlayer(video, shown, fail, drained) {
    const MS = mseClass();
    let source = null;
    let buffer = null;
    let codec = "";
    let needKey = true;
    let queue = [];
    let sequence = 0;
    let dts = 0;
    let lastWall = null;
    let duration = H264.TIMESCALE / 15;
    let url = null;
    let metas = []; // {start (s), meta}, in order, for the pictures shown
    let pruneAt = 0;

    function open(init) {
      close();
      codec = init.codec;
      const mime = `video/mp4; codecs="${codec}"`;
      if (!MS.isTypeSupported(mime)) { fail(`${mime} not supported`); return; }
      source = new MS();
      video.disableRemotePlayback = true; // ManagedMediaSource requires it (Safari)
      video.muted = true;
      video.playsInline = true;
      url = URL.createObjectURL(source);
      video.src = url;
      queue = [init.bytes];
      dts = 0;
      metas = [];
      lastWall = null;
      source.addEventListener("sourceopen", () => {
        try {
          buffer = source.addSourceBuffer(mime);
          buffer.mode = "segments";
          buffer.addEventListener("updateend", pump);
          buffer.addEventListener("error", () => close());
          pump();
        } catch (e) {
          fail(`MSE: ${e.message || e}`);
        }
      }, { once: true });
    }

    function pump() {
      if (!buffer || buffer.updating) return;
      if (!queue.length) { drained(); return; }
      try {
        buffer.appendBuffer(queue.shift());
      } catch (e) {
        // QuotaExceededError or a closed source: a new source at the next IDR.
        close();
        return;
      }
      keepLive();
    }

    function keepLive() {
      const b = video.buffered;
      if (!b.length) return;
      const end = b.end(b.length - 1);
      // Behind by more than a few frames (a tab in the background, a stall): jump to the edge.
      const behind = end - video.currentTime;
      if (behind > Math.max(0.5, 4 * duration / H264.TIMESCALE)) {
        video.currentTime = Math.max(b.start(b.length - 1), end - 0.05);
      }
      // A little behind: play a little faster until at the edge (a live view, not a film).
      video.playbackRate = behind > 0.1 + duration / H264.TIMESCALE ? 1.25 : 1;
      if (video.paused) video.play().catch(() => {});
      // Keep about 10 s buffered: a live page may stay open for days.
      const now = performance.now();
      if (now > pruneAt && video.currentTime > 15 && !buffer.updating) {
        pruneAt = now + 10000;
        try { buffer.remove(0, video.currentTime - 10); } catch (e) { /* next time */ }
      }
    }

    function feed(bytes, meta) {
      const unit = H264.inspect(bytes);
      if (needKey && !unit.idr) return;
      try {
        if (unit.idr && unit.sps && unit.pps && (!source || H264.codecString(unit.sps) !== codec)) {
          open(H264.initSegment(unit.sps, unit.pps));
          if (!source) return;
        }
        if (!source) return;
        // Each sample lasts as long as the gap before it: a skip to the next IDR shows the
        // last picture meanwhile instead of leaving a hole in the timeline.
        if (lastWall !== null) {
          const gap = Math.round((meta.wall - lastWall) * H264.TIMESCALE);
          if (gap > 0 && gap < 2 * H264.TIMESCALE) duration = gap;
        }
        lastWall = meta.wall;
        sequence += 1;
        metas.push({ start: dts / H264.TIMESCALE, meta });
        if (metas.length > 120) metas = metas.slice(-60);
        queue.push(H264.fragment(sequence, unit.units, unit.idr, dts, duration));
        dts += duration;
        needKey = false;
        if (queue.length > 30) { reset(); return; }
        pump();
      } catch (e) {
        fail(`MSE: ${e.message || e}`);
      }
    }

    // Pictures shown: requestVideoFrameCallback where there is one, else timeupdate.
    let lastShown = -1;
    function onPicture(mediaTime) {
      let found = null;
      for (const m of metas) {
        if (m.start <= mediaTime + 0.001) found = m; else break;
      }
      if (found && found.meta.seq !== lastShown) {
        lastShown = found.meta.seq;
        shown(found.meta);
      }
    }
    if ("requestVideoFrameCallback" in HTMLVideoElement.prototype) {
      const each = (now, info) => { onPicture(info.mediaTime); video.requestVideoFrameCallback(each); };
      video.requestVideoFrameCallback(each);
    } else {
      video.addEventListener("timeupdate", () => onPicture(video.currentTime));
    }

    // Drop what waits to be appended and start again at the next IDR (the socket was closed,
    // or we fell behind); the source and what it holds stay.
    function reset() {
      needKey = true;
      queue = buffer ? [] : queue.slice(0, 1); // before sourceopen, the init segment stays
    }

    function close() {
      buffer = null;
      if (source && source.readyState === "open") {
        try { source.endOfStream(); } catch (e) { /* already ended */ }
      }
      source = null;
      if (url) { URL.revokeObjectURL(url); url = null; }
      queue = [];
      needKey = true;
    }

    return {
      feed,
      backlog: () => queue.length,
      reset,
      close() { close(); video.removeAttribute("src"); video.load(); codec = ""; },
    };
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

  function storedOutlines(name) {
    try { return localStorage.getItem(OUTLINES_KEY + name) === "1"; } catch (e) { return false; }
  }

  function storeOutlines(name, on) {
    try { localStorage.setItem(OUTLINES_KEY + name, on ? "1" : "0"); } catch (e) { /* private mode */ }
  }

  // Where a picture of `w` x `h` lands inside `el` (object-fit: contain), relative to `box`.
  function pictureRect(el, w, h, box) {
    const r = el.getBoundingClientRect();
    if (!w || !h || !r.width || !r.height) return null;
    const scale = Math.min(r.width / w, r.height / h);
    const pw = w * scale, ph = h * scale;
    return { x: r.left - box.left + (r.width - pw) / 2, y: r.top - box.top + (r.height - ph) / 2, w: pw, h: ph };
  }

  // One camera's picture, badge and pills, on its own websocket. `root` holds the elements
  // (by class); `view` is "grid" (a tile: the server paces it to its share) or "" (full rate).
  function Tile(root, name) {
    const q = (cls) => root.querySelector("." + cls);
    const img = q("frame");
    const conn = q("conn");
    const badge = q("badge");
    let path = pickPath();
    let player = null; // the H.264 path's WebCodecsPlayer or MsePlayer
    let surface = null; // its canvas or video, in front of the <img>
    let pendingAck = false; // an ack held back while the decoder catches up
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
    // The outlines: a canvas over the picture, the toggle, and the last boxes the server sent.
    const overlay = document.createElement("canvas");
    overlay.className = "outlines";
    overlay.setAttribute("aria-hidden", "true");
    const outlinesBox = q("outlines-toggle");
    let outlinesOn = storedOutlines(name);
    let outlines = null; // {boxes, above, area, bar} from the newest status, null: none
    if (outlinesBox) outlinesBox.checked = outlinesOn;

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

    function showPath(note) {
      const el = q("path");
      if (el) {
        el.textContent = PATH_NAMES[path];
        el.title = note || "how the picture reaches this page";
      }
      root.dataset.path = path;
    }

    // The element the picture is shown in: the <img> for JPEG, else a canvas or a video.
    function setUp() {
      if (player) { player.close(); player = null; }
      if (surface) { surface.remove(); surface = null; }
      img.hidden = path !== "jpeg";
      if (path === "webcodecs") {
        surface = document.createElement("canvas");
        player = WebCodecsPlayer(surface, shownUnit, (why) => switchPath(why));
      } else if (path === "mse") {
        surface = document.createElement("video");
        surface.muted = true;
        surface.autoplay = true;
        player = MsePlayer(surface, shownUnit, (why) => switchPath(why), () => {
          if (pendingAck) ack();
        });
      }
      if (surface) {
        surface.className = "frame h264";
        surface.setAttribute("aria-label", img.alt);
        img.after(surface);
      }
      (surface || img).after(overlay); // above the picture, below the tile's bar and menu
      showPath();
      drawOutlines();
    }

    // The picture's own size, whichever element shows it (0 x 0 before the first); the
    // last one shown, since an <img> has none while its next JPEG decodes.
    let pictureWH = [0, 0];
    function pictureSize() {
      let wh = [0, 0];
      if (path === "jpeg") wh = [img.naturalWidth, img.naturalHeight];
      else if (surface && surface.tagName === "VIDEO") wh = [surface.videoWidth, surface.videoHeight];
      else if (surface && surface.classList.contains("shown")) wh = [surface.width, surface.height];
      if (wh[0] && wh[1]) pictureWH = wh;
      return pictureWH;
    }

    // The boxes over the picture, where the letterboxing puts it; cleared when off or none.
    function drawOutlines() {
      const box = overlay.getBoundingClientRect();
      const ratio = window.devicePixelRatio || 1;
      const w = Math.round(box.width * ratio), h = Math.round(box.height * ratio);
      if (overlay.width !== w || overlay.height !== h) { overlay.width = w; overlay.height = h; }
      const ctx = overlay.getContext("2d");
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      ctx.clearRect(0, 0, overlay.width, overlay.height);
      overlay.dataset.boxes = "0";
      if (!outlinesOn || !outlines) return;
      const [pw, ph] = pictureSize();
      const rect = pictureRect(path === "jpeg" ? img : surface, pw, ph, box);
      if (!rect) return;
      ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
      ctx.lineWidth = 2;
      ctx.strokeStyle = outlines.above ? ABOVE_COLOUR : BELOW_COLOUR;
      ctx.setLineDash(outlines.above ? [] : [5, 4]);
      for (const [x, y, bw, bh] of outlines.boxes) {
        ctx.strokeRect(rect.x + x * rect.w, rect.y + y * rect.h, bw * rect.w, bh * rect.h);
      }
      overlay.dataset.boxes = String(outlines.boxes.length);
      if (typeof outlines.area === "number" && typeof outlines.bar === "number") {
        // What the user tunes against: how much changed, and how much must.
        const text = `motion ${outlines.area.toFixed(1)} % · bar ${outlines.bar.toFixed(1)} %`;
        ctx.setLineDash([]);
        ctx.font = "600 12px system-ui, sans-serif";
        const tw = ctx.measureText(text).width;
        const tx = rect.x + rect.w - tw - 10, ty = rect.y + 8;
        ctx.fillStyle = "rgba(14, 16, 20, .7)";
        ctx.fillRect(tx - 5, ty - 2, tw + 10, 18);
        ctx.fillStyle = outlines.above ? ABOVE_COLOUR : "#d6dae2";
        ctx.textBaseline = "top";
        ctx.fillText(text, tx, ty + 1);
      }
    }

    function setOutlines(on) {
      outlinesOn = on;
      storeOutlines(name, on);
      if (!on) outlines = null;
      if (ws && ws.readyState === WebSocket.OPEN) ws.send(on ? OUTLINES_ON : OUTLINES_OFF);
      drawOutlines();
    }
    if (outlinesBox) outlinesBox.addEventListener("change", () => setOutlines(outlinesBox.checked));
    if (window.ResizeObserver) new ResizeObserver(() => drawOutlines()).observe(overlay);

    // This path does not work here: the next one, on a new socket.
    function switchPath(why) {
      const expected = why === "no H.264"; // a camera that records nothing: not a fault
      const next = expected ? "jpeg" : fallback(path);
      (expected ? console.info : console.warn)(
        `live view: ${PATH_NAMES[path]} ${expected ? "not offered" : "failed"} (${why}); using ${PATH_NAMES[next]}`);
      path = next;
      setUp();
      showPath(`${why}: fell back to ${PATH_NAMES[next]}`);
      if (wanted) {
        drop();
        backoff = 500;
        connect();
      }
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
      if (outlinesBox && typeof msg.motion === "boolean") {
        // No motion detector on this camera: nothing to outline (the choice stays stored).
        outlinesBox.disabled = !msg.motion;
        outlinesBox.closest("label").title = msg.motion
          ? "draw what the motion detector sees changing"
          : "this camera does not run the motion detector (--detect motion)";
      }
      // No boxes in the status: motion is not analysed now (disarmed, no --detect motion).
      outlines = outlinesOn && Array.isArray(msg.boxes)
        ? { boxes: msg.boxes, above: !!msg.above, area: msg.area, bar: msg.bar } : null;
      drawOutlines();
      if (path !== "jpeg" && msg.h264 === false) {
        // A camera that records nothing encodes no H.264: JPEG for this one.
        switchPath("no H.264");
        return;
      }
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
      if (path !== "jpeg") {
        const roundTrip = Math.max(0, (receivedAt - ackAt) / 1000 - hold);
        // Ack at once, so that the next unit finds us waiting; but not while the decoder
        // is behind: then the server skips us to the next IDR rather than queue.
        player.feed(new Uint8Array(buf, HEADER_BYTES), { seq, wall, ageAtSend, roundTrip, receivedAt });
        if (player.backlog() > BACKLOG) pendingAck = true; else ack();
        return;
      }
      const url = URL.createObjectURL(new Blob([new Uint8Array(buf, HEADER_BYTES)], { type: "image/jpeg" }));
      img.src = url;
      try {
        await img.decode();
      } catch (e) {
        // A frame that does not decode is skipped; the next one will replace it.
      }
      if (shownUrl) URL.revokeObjectURL(shownUrl);
      shownUrl = url;
      const roundTrip = Math.max(0, (receivedAt - ackAt) / 1000 - hold);
      shown(img, { seq, wall, ageAtSend, roundTrip, receivedAt });
      ack();
    }

    // An H.264 picture was drawn (the players call this).
    function shownUnit(meta) {
      shown(surface, meta);
      if (pendingAck && player && player.backlog() <= BACKLOG) ack();
    }

    // The bookkeeping of a picture shown in `el`: counters, age, fps, clock, badge.
    function shown(el, meta) {
      const shownAt = performance.now();
      const age = meta.ageAtSend + meta.roundTrip / 2 + (shownAt - meta.receivedAt) / 1000;
      const seq = meta.seq;
      const wall = meta.wall;
      frames += 1;
      recent.push(shownAt);
      if (el) { el.dataset.seq = String(seq); el.classList.add("shown"); }
      pictureSize(); // noted while the picture is there
      if (outlinesOn) drawOutlines(); // the picture may have changed size
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
    }

    function ack() {
      pendingAck = false;
      if (ws && ws.readyState === WebSocket.OPEN) {
        ackAt = performance.now();
        ws.send(ACK);
      }
    }

    function connect() {
      retry = null;
      if (!wanted) return;
      const scheme = location.protocol === "https:" ? "wss:" : "ws:";
      const params = new URLSearchParams();
      if (multi) params.set("camera", name);
      if (multi && view) params.set("view", view);
      if (path !== "jpeg") params.set("codec", "h264");
      const query = params.toString() ? "?" + params : "";
      if (player) player.reset(); // a new socket starts at an IDR
      ws = new WebSocket(`${scheme}//${location.host}/websocket${query}`);
      ws.binaryType = "arraybuffer";
      ws.onopen = () => {
        // backoff is reset by a frame, not here: a socket that opens but stalls again must not
        // be reopened at full speed forever.
        ackAt = openedAt = performance.now(); // opening the socket is the first ack
        reacked = false;
        if (outlinesOn) ws.send(OUTLINES_ON);
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
      pendingAck = false;
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

    setUp();
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

  // A URL of this page that keeps its ?codec= (a forced path stays forced).
  function withCodec(url) {
    const codec = new URLSearchParams(location.search).get("codec");
    if (!codec) return url;
    return url + (url.includes("?") ? "&" : "?") + "codec=" + encodeURIComponent(codec);
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
      if (push) history.pushState({ camera: name }, "", withCodec(name ? `/?camera=${encodeURIComponent(name)}` : "/"));
      apply();
    }

    function back() {
      if (!enlarged) return;
      if (history.state && history.state.camera) {
        history.back(); // popstate does the rest
      } else {
        enlarge("", false);
        history.replaceState(null, "", withCodec("/"));
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
