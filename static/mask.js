// The motion mask editor: paint over the camera's picture, red = ignored; saved as a PNG
// where white = watch and black = ignore (the detector's convention).
"use strict";
(() => {
  const body = document.body;
  const canvas = document.getElementById("mask");
  if (!canvas) return; // motion detection is off for this camera: nothing to edit
  const camera = body.dataset.camera;
  const xsrf = body.dataset.xsrf || "";
  const api = "/api/cameras/" + encodeURIComponent(camera);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  const picture = document.getElementById("picture");
  const stage = document.getElementById("stage");
  const message = document.getElementById("message");
  const sizeInput = document.getElementById("size");
  const sizeShown = document.getElementById("size-shown");
  const RED = [230, 30, 30];
  const W = canvas.width, H = canvas.height;
  let tool = "brush";
  let last = null; // the pointer's previous point while painting
  let pointer = null;
  let changed = false;

  stage.style.setProperty("--aspect", String(W / H));

  function say(text, bad) {
    message.textContent = text;
    message.classList.toggle("bad", !!bad);
  }

  // -- the mask on the canvas: opaque red = ignored, transparent = watched -----------------

  function fill(ignored) {
    ctx.globalCompositeOperation = "source-over";
    ctx.clearRect(0, 0, W, H);
    if (ignored) {
      ctx.fillStyle = `rgb(${RED.join(",")})`;
      ctx.fillRect(0, 0, W, H);
    }
  }

  function mapPixels(fn) {
    const img = ctx.getImageData(0, 0, W, H);
    const d = img.data;
    for (let i = 0; i < d.length; i += 4) {
      const ignored = fn(d, i);
      d[i] = RED[0]; d[i + 1] = RED[1]; d[i + 2] = RED[2];
      d[i + 3] = ignored ? 255 : 0;
    }
    ctx.globalCompositeOperation = "source-over";
    ctx.putImageData(img, 0, 0);
  }

  function showMask(image) {
    // A mask of any size, scaled onto the picture as the detector scales it.
    const t = document.createElement("canvas");
    t.width = W; t.height = H;
    const tc = t.getContext("2d", { willReadFrequently: true });
    tc.imageSmoothingEnabled = false;
    tc.drawImage(image, 0, 0, W, H);
    const src = tc.getImageData(0, 0, W, H).data;
    mapPixels((d, i) => {
      const luma = 0.299 * src[i] + 0.587 * src[i + 1] + 0.114 * src[i + 2];
      return src[i + 3] < 128 || luma < 128; // transparent counts as ignored, as on the server
    });
  }

  function toPng() {
    const t = document.createElement("canvas");
    t.width = W; t.height = H;
    const tc = t.getContext("2d");
    const img = ctx.getImageData(0, 0, W, H);
    const d = img.data;
    for (let i = 0; i < d.length; i += 4) {
      const v = d[i + 3] >= 128 ? 0 : 255; // ignored: black; watched: white
      d[i] = d[i + 1] = d[i + 2] = v;
      d[i + 3] = 255;
    }
    tc.putImageData(img, 0, 0);
    return new Promise((resolve) => t.toBlob(resolve, "image/png"));
  }

  async function loadMask() {
    let response;
    try {
      response = await fetch(api + "/mask.png", { cache: "no-store", credentials: "same-origin" });
    } catch (e) {
      say("Cannot reach pancake: the mask was not loaded.", true);
      return;
    }
    if (response.status === 404) {
      fill(false);
      changed = false;
      say("No mask yet: the whole picture is watched.");
      return;
    }
    if (!response.ok) {
      say(await reason(response), true);
      return;
    }
    const bitmap = await createImageBitmap(await response.blob());
    showMask(bitmap);
    changed = false;
    say("The mask in use.");
  }

  async function reason(response) {
    try {
      const j = await response.json();
      if (j && j.error) return j.error;
    } catch (e) { /* not JSON */ }
    return `pancake answered ${response.status}`;
  }

  async function send(blob, what) {
    let response;
    try {
      response = await fetch(api + "/mask.png", {
        method: "PUT", body: blob, credentials: "same-origin",
        headers: { "Content-Type": "image/png", "X-XSRFToken": xsrf },
      });
    } catch (e) {
      say(`Cannot reach pancake: ${what} not saved.`, true);
      return false;
    }
    if (response.status === 401) {
      location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
      return false;
    }
    if (!response.ok) {
      say(`Not saved: ${await reason(response)}`, true);
      return false;
    }
    return true;
  }

  // -- painting -------------------------------------------------------------------------------

  function point(e) {
    const r = canvas.getBoundingClientRect();
    return { x: (e.clientX - r.left) * W / r.width, y: (e.clientY - r.top) * H / r.height,
             scale: W / r.width };
  }

  function paint(from, to) {
    // The brush's size is in screen pixels: the same feel on a phone and a desktop.
    const width = Number(sizeInput.value) * to.scale;
    ctx.globalCompositeOperation = tool === "brush" ? "destination-out" : "source-over";
    ctx.strokeStyle = ctx.fillStyle = `rgb(${RED.join(",")})`;
    ctx.lineWidth = width;
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath();
    if (from.x === to.x && from.y === to.y) {
      ctx.arc(to.x, to.y, width / 2, 0, 2 * Math.PI);
      ctx.fill();
    } else {
      ctx.moveTo(from.x, from.y);
      ctx.lineTo(to.x, to.y);
      ctx.stroke();
    }
    changed = true;
  }

  canvas.addEventListener("pointerdown", (e) => {
    if (pointer !== null) return; // a second finger does not paint
    pointer = e.pointerId;
    canvas.setPointerCapture(e.pointerId);
    last = point(e);
    paint(last, last);
    e.preventDefault();
  });
  canvas.addEventListener("pointermove", (e) => {
    if (e.pointerId !== pointer) return;
    const p = point(e);
    paint(last, p);
    last = p;
  });
  const stop = (e) => {
    if (e.pointerId !== pointer) return;
    pointer = null;
    last = null;
    say("Not saved yet.");
  };
  canvas.addEventListener("pointerup", stop);
  canvas.addEventListener("pointercancel", stop);

  function choose(which) {
    tool = which;
    for (const id of ["brush", "eraser"]) {
      const b = document.getElementById(id);
      b.classList.toggle("on", id === which);
      b.setAttribute("aria-pressed", String(id === which));
    }
  }
  document.getElementById("brush").addEventListener("click", () => choose("brush"));
  document.getElementById("eraser").addEventListener("click", () => choose("eraser"));
  sizeInput.addEventListener("input", () => { sizeShown.textContent = sizeInput.value; });
  document.getElementById("clear").addEventListener("click", () => {
    fill(true);
    changed = true;
    say("Everything is ignored: paint with the brush what to watch.");
  });
  document.getElementById("invert").addEventListener("click", () => {
    mapPixels((d, i) => d[i + 3] < 128);
    changed = true;
    say("Inverted. Not saved yet.");
  });
  document.getElementById("revert").addEventListener("click", loadMask);
  document.getElementById("picture-again").addEventListener("click", () => {
    picture.src = api + "/snapshot.jpg?t=" + Date.now();
  });

  document.getElementById("save").addEventListener("click", async () => {
    say("Saving…");
    const blob = await toPng();
    if (await send(blob, "the mask")) {
      changed = false;
      say("Saved: the motion detector uses it now.");
    }
  });

  document.getElementById("upload").addEventListener("change", async (e) => {
    const file = e.target.files && e.target.files[0];
    e.target.value = "";
    if (!file) return;
    say("Uploading…");
    if (await send(file, file.name)) {
      await loadMask();
      say(`Saved ${file.name}: the motion detector uses it now.`);
    }
  });

  picture.addEventListener("error", () => {
    say("No picture from the camera yet: paint anyway, or try New picture.", true);
  });
  window.addEventListener("beforeunload", (e) => {
    if (changed) e.preventDefault();
  });

  loadMask();
})();
