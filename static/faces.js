// The Faces page: the known people (crops, rename, remove) and "add from camera": the faces
// in a camera's current picture, one of them named. Names are only ever set as text.
"use strict";
(() => {
  const list = document.getElementById("people");
  if (!list) return; // no camera searches faces: nothing to manage
  const xsrf = document.body.dataset.xsrf || "";
  const message = document.getElementById("message");
  const none = document.getElementById("none");
  const template = document.getElementById("person-t");
  const camera = document.getElementById("camera");
  const lookButton = document.getElementById("look");
  const stage = document.getElementById("stage");
  const picture = document.getElementById("picture");
  const boxes = document.getElementById("boxes");
  const found = document.getElementById("found");
  const storePick = document.getElementById("store"); // only with several stores
  const store = () => Number(storePick ? storePick.value : 0);
  const names = document.createElement("datalist");
  names.id = "names";
  document.body.appendChild(names);
  let people = [];

  function say(text, bad) {
    message.textContent = text;
    message.classList.toggle("bad", !!bad);
  }

  async function call(method, url, body) {
    const r = await fetch(url, {
      method, credentials: "same-origin",
      headers: body === undefined ? {} : { "Content-Type": "application/json", "X-XSRFToken": xsrf },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let doc = {};
    try { doc = await r.json(); } catch (e) { doc = {}; }
    if (r.status === 401) { location.href = "/login?next=" + encodeURIComponent("/faces"); }
    if (!r.ok) throw new Error(doc.error || ("HTTP " + r.status));
    return doc;
  }

  // -- the people ---------------------------------------------------------------------------

  function show() {
    list.replaceChildren();
    names.replaceChildren();
    none.hidden = people.length > 0;
    for (const p of people) {
      const li = template.content.firstElementChild.cloneNode(true);
      li.dataset.name = p.name;
      li.querySelector(".pname").textContent = p.name;
      li.querySelector(".count").textContent = p.faces.length === 1 ? "1 face" : p.faces.length + " faces";
      const crops = li.querySelector(".crops");
      for (const f of p.faces.slice(-6)) {
        const img = document.createElement("img");
        img.src = "/api/faces/crops/" + f.id + ".jpg?store=" + store();
        img.alt = p.name;
        img.title = f.source;
        crops.appendChild(img);
      }
      li.querySelector(".rename").addEventListener("click", () => rename(p.name));
      li.querySelector(".remove").addEventListener("click", () => remove(p.name));
      list.appendChild(li);
      const opt = document.createElement("option");
      opt.value = p.name;
      names.appendChild(opt);
    }
  }

  async function load() {
    try {
      people = (await call("GET", "/api/faces?store=" + store())).people;
      show();
    } catch (e) { say("The people cannot be read: " + e.message, true); }
  }

  async function rename(name) {
    const to = prompt("New name for " + name + ":", name);
    if (to === null || to.trim() === "" || to === name) return;
    try {
      const done = await call("POST", "/api/faces/rename", { name, new: to, store: store() });
      say(name + " is now " + done.name + ".");
    } catch (e) { say(e.message, true); }
    await load();
  }

  async function remove(name) {
    if (!confirm("Remove " + name + ", their face embeddings and crops? This cannot be undone.")) return;
    try {
      await call("POST", "/api/faces/remove", { name, store: store() });
      say(name + " removed.");
    } catch (e) { say(e.message, true); }
    await load();
  }

  // -- add from camera ------------------------------------------------------------------------

  async function look() {
    const cam = camera.value;
    if (!cam) { say("No camera searches faces.", true); return; }
    lookButton.disabled = true;
    say("Looking for faces…");
    found.replaceChildren();
    boxes.replaceChildren();
    try {
      const got = await call("POST", "/api/cameras/" + encodeURIComponent(cam) + "/faces", {});
      await new Promise((resolve) => {
        picture.onload = picture.onerror = resolve;
        picture.src = "/api/cameras/" + encodeURIComponent(cam) + "/snapshot.jpg?t=" + Date.now();
      });
      stage.hidden = false;
      got.faces.forEach((f, i) => face(got.look, f, i));
      say(got.faces.length === 0 ? "No face in " + camera.selectedOptions[0].textContent + "'s picture: look again when someone faces the camera."
        : got.faces.length + (got.faces.length === 1 ? " face" : " faces") + " found: name one to add it.");
    } catch (e) { say(e.message, true); }
    lookButton.disabled = false;
  }

  function face(token, f, i) {
    const [x, y, w, h] = f.box;
    const known = f.name !== "unknown";
    const box = document.createElement("div");
    box.className = "box" + (known ? " known" : "");
    box.style.left = (x * 100) + "%"; box.style.top = (y * 100) + "%";
    box.style.width = (w * 100) + "%"; box.style.height = (h * 100) + "%";
    const tag = document.createElement("span");
    tag.textContent = (i + 1) + " · " + f.name;
    box.appendChild(tag);
    boxes.appendChild(box);

    const li = document.createElement("li");
    li.className = "face";
    const img = document.createElement("img");
    img.src = f.crop; img.alt = "face " + (i + 1);
    const label = document.createElement("span");
    label.textContent = (i + 1) + ". " + (known ? f.name : "unknown");
    li.append(img, label);
    if (f.enrol) {
      const input = document.createElement("input");
      input.setAttribute("list", "names");
      input.placeholder = "Name (new or existing)";
      input.maxLength = 64;
      input.value = known ? f.name : "";
      input.setAttribute("aria-label", "name of face " + (i + 1));
      const add = document.createElement("button");
      add.type = "button"; add.className = "primary add"; add.textContent = "Add";
      const go = async () => {
        const name = input.value.trim();
        if (!name) { input.focus(); return; }
        add.disabled = true;
        try {
          const done = await call("POST", "/api/faces/add", { look: token, face: i, name });
          say("Added to " + done.name + " (" + done.faces + (done.faces === 1 ? " face" : " faces") + ").");
          label.textContent = (i + 1) + ". " + done.name + " ✓";
          await load();
        } catch (e) { say(e.message, true); add.disabled = false; }
      };
      add.addEventListener("click", go);
      input.addEventListener("keydown", (ev) => { if (ev.key === "Enter") go(); });
      li.append(input, add);
    } else {
      const small = document.createElement("span");
      small.className = "dim";
      small.textContent = "too small to recognise: closer to the camera, then look again";
      li.append(small);
    }
    found.appendChild(li);
  }

  // With several stores, "add from camera" offers the cameras of the store shown (a face
  // is added to the store of the camera it was seen by).
  function pickStore() {
    let first = null;
    for (const o of camera.options) {
      o.hidden = o.disabled = Number(o.dataset.store) !== store();
      if (!o.hidden && first === null) first = o;
    }
    if (camera.selectedOptions[0] && camera.selectedOptions[0].hidden && first) first.selected = true;
    lookButton.disabled = first === null;
    stage.hidden = true;
    found.replaceChildren();
    boxes.replaceChildren();
    say("");
    load();
  }
  if (storePick) storePick.addEventListener("change", pickStore);

  lookButton.addEventListener("click", look);
  if (storePick) pickStore(); else load();
})();
