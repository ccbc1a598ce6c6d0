// CLIP-DLUT page: a native task (submit, progress, cancel, get) and the apply endpoint. No dependencies.
"use strict";
const $ = (id) => document.getElementById(id);
const RECENT_KEY = "clipdlut.recent";
const API_KEY = "clipdlut.api-key";  // asked for once when the service answers 401, kept in this browser
let file = null, taskId = null, result = null, polling = null, applySeq = 0;

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function api(path, options = {}) {
  const key = localStorage.getItem(API_KEY);
  const headers = new Headers(options.headers);
  if (key) headers.set("Authorization", `Bearer ${key}`);
  const r = await fetch(path, { ...options, headers });
  if (r.status === 401) {
    $("key-box").hidden = false;
    $("api-key").focus();
    throw new Error(key ? "The service refused this API key: enter the right one below."
                        : "This service needs an API key: enter it below, then try again.");
  }
  if (!r.ok) {
    let message = `${r.status} ${r.statusText}`;
    try { const body = await r.json(); message = body.error || JSON.stringify(body); } catch (e) { /* not JSON */ }
    if (r.status === 429) message += " (the service is busy; try again shortly)";
    if (r.status === 413) message = "The photo is too large: " + message;
    throw new Error(message);
  }
  return r;
}

function readAsDataURL(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

async function choose(f) {
  file = f;
  $("drop-text").textContent = f ? `${f.name} (${Math.round(f.size / 1024)} KB)` : "Drop a photo here";
  if (f) $("before").src = URL.createObjectURL(f);
  showError("");
}

function recent() {
  try { return JSON.parse(localStorage.getItem(RECENT_KEY) || "[]"); } catch (e) { return []; }
}

function remember(entry) {
  const list = [entry, ...recent().filter((e) => e.id !== entry.id)].slice(0, 20);
  localStorage.setItem(RECENT_KEY, JSON.stringify(list));
  renderRecent();
}

function renderRecent() {
  const ul = $("recent");
  ul.replaceChildren();
  for (const e of recent()) {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.className = "example";
    b.textContent = `${new Date(e.at).toLocaleString()} · ${e.prompt}`;
    b.addEventListener("click", () => open(e.id));
    li.append(b);
    ul.append(li);
  }
}

async function submit(ev) {
  ev.preventDefault();
  showError("");
  if (!file) return showError("Choose a photo first.");
  const prompt = $("prompt").value.trim();
  if (!prompt) return showError("Describe the look you want, e.g. 温暖的金色黄昏胶片.");
  const body = {
    image: await readAsDataURL(file), target_prompt: prompt, steps: Number($("steps").value),
    lut_size: Number($("lut-size").value), seed: Number($("seed").value), image_format: "png",
    keep_blacks: $("keep-blacks").checked, keep_whites: $("keep-whites").checked,
  };
  if ($("source").value.trim()) body.source_prompt = $("source").value.trim();
  $("submit").disabled = true;
  try {
    const r = await api("/v1/retouch/submit", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    const { task_id } = await r.json();
    remember({ id: task_id, prompt, at: Date.now() });
    watch(task_id);
  } catch (e) {
    showError(e.message);
    $("submit").disabled = false;
  }
}

function watch(id) {
  taskId = id;
  result = null;
  $("run").hidden = false;
  $("result").hidden = true;
  $("stop").disabled = false;
  $("preview").hidden = true;
  clearInterval(polling);
  polling = setInterval(poll, 400);
  poll();
}

async function poll() {
  const id = taskId;
  try {
    const r = await api("/v1/progress", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ task_id: id, include_preview: true }) });
    const p = await r.json();
    if (id !== taskId) return;
    $("state").textContent = p.status === "cancelled" ? "stopped" : p.status;
    $("iteration").textContent = p.iteration;
    $("total").textContent = p.total;
    $("bar").max = Math.max(1, p.total);
    $("bar").value = p.iteration;
    $("loss").textContent = p.loss == null ? "–" : p.loss.toFixed(4);
    if (p.preview && $("preview").getAttribute("src") !== p.preview) {
      $("preview").src = p.preview;
      $("preview").hidden = false;
    }
    if (["finished", "cancelled", "failed"].includes(p.status)) {
      clearInterval(polling);
      $("stop").disabled = true;
      $("submit").disabled = false;
      if (p.status === "failed") showError(`The job failed: ${p.error || "no reason given"}`);
      if (p.status === "finished") await showResult(id);
    }
  } catch (e) {
    clearInterval(polling);
    showError(e.message);
    $("submit").disabled = false;
  }
}

async function stop() {
  if (!taskId) return;
  $("stop").disabled = true;
  try {
    await api(`/v1/retouch/cancel?task_id=${encodeURIComponent(taskId)}`, { method: "PUT" });
  } catch (e) { showError(e.message); }
}

async function showResult(id) {
  const r = await api(`/v1/retouch/get?task_id=${encodeURIComponent(id)}`);
  result = await r.json();
  if (!file) {  // opened from the recent list: no local original, use the graded image as both
    file = await (await fetch(`data:${result.media_type};base64,${result.image}`)).blob();
    $("before").src = URL.createObjectURL(file);
  }
  $("after").src = `data:${result.media_type};base64,${result.image}`;
  const s = result.scores;
  $("scores").textContent = `CLIP similarity to the prompt: ${s.source_target.toFixed(3)} before → `
    + `${s.result_target.toFixed(3)} after (direction ${s.directional >= 0 ? "+" : ""}${s.directional.toFixed(3)}); `
    + `${result.width}×${result.height}, ${result.steps} steps, model ${result.model}, `
    + `${result.timings.total_s.toFixed(1)} s.`;
  const q = result.quality;
  $("quality").textContent = q ? `Content kept (SSIM of luminance) ${q.ssim.toFixed(3)}; mean colour shift `
    + `${q.color_shift.toFixed(1)} ΔE; LUT safe on any footage: ${q.safe ? "yes" : "no"} (steepest slope `
    + `${q.max_slope.toFixed(2)}, smallest own-axis step ${q.min_own_step.toFixed(2)} levels).` : "";
  const cube = new Blob([result.cube], { type: "text/plain" });
  setLink("dl-cube", URL.createObjectURL(cube), `clipdlut-${result.lut_size}.cube`, `.cube (${result.lut_size})`);
  for (const n of [17, 33, 65]) setLink(`dl-cube-${n}`, await lutURL(id, { size: n }), `clipdlut-${n}.cube`);
  setLink("dl-hald", await lutURL(id, { format: "hald" }), "clipdlut-hald.png");
  setLink("dl-image", $("after").src, `clipdlut.${result.media_type.split("/")[1]}`);
  $("strength").value = 1;
  $("strength-value").textContent = "1.00";
  $("result").hidden = false;
}

async function lutURL(id, options) {
  const r = await api("/v1/lut", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ task_id: id, ...options }) });
  return URL.createObjectURL(await r.blob());
}

function setLink(id, href, name, text) {
  const a = $(id);
  a.href = href;
  a.download = name;
  if (text) a.textContent = text;
}

async function restrength() {
  const strength = Number($("strength").value);
  $("strength-value").textContent = strength.toFixed(2);
  if (!result || !file) return;
  const seq = ++applySeq;
  const form = new FormData();
  form.append("image", file, file.name || "photo.png");
  form.append("lut", new Blob([result.cube], { type: "text/plain" }), "look.cube");
  form.append("strength", String(strength));
  form.append("image_format", "png");
  try {
    const r = await api("/v1/apply", { method: "POST", body: form });
    const url = URL.createObjectURL(await r.blob());
    if (seq === applySeq) {
      $("after").src = url;
      setLink("dl-image", url, "clipdlut.png");
    }
  } catch (e) { showError(e.message); }
}

async function open(id) {
  showError("");
  file = null;
  watch(id);
}

function split() {
  $("after").style.clipPath = `inset(0 ${100 - Number($("split").value)}% 0 0)`;
}

$("file").addEventListener("change", () => choose($("file").files[0] || null));
$("drop").addEventListener("dragover", (e) => { e.preventDefault(); $("drop").classList.add("over"); });
$("drop").addEventListener("dragleave", () => $("drop").classList.remove("over"));
$("drop").addEventListener("drop", (e) => {
  e.preventDefault();
  $("drop").classList.remove("over");
  if (e.dataTransfer.files.length) choose(e.dataTransfer.files[0]);
});
for (const b of document.querySelectorAll("button.example")) {
  if (b.closest("#recent")) continue;
  b.addEventListener("click", () => { $("prompt").value = b.textContent; $("prompt").focus(); });
}
$("form").addEventListener("submit", submit);
$("key-box").addEventListener("submit", (ev) => {
  ev.preventDefault();
  localStorage.setItem(API_KEY, $("api-key").value.trim());
  $("api-key").value = "";
  $("key-box").hidden = true;
  showError("");
  if (taskId && !result) watch(taskId);  // a job whose progress was refused: follow it again
});
$("stop").addEventListener("click", stop);
$("strength").addEventListener("change", restrength);
$("strength").addEventListener("input", () => { $("strength-value").textContent = Number($("strength").value).toFixed(2); });
$("split").addEventListener("input", split);
renderRecent();
split();
