// CLIP-DLUT page: a native task (submit, progress, cancel, get) and the apply endpoint. No dependencies.
// Loaded as a module: nothing here becomes a global (no window.open or window.stop shadowed), strict mode.
import { zipSync } from "./fflate.js";  // ("Download all": a zip written here, from what the page holds)

const $ = (id) => document.getElementById(id);
const RECENT_KEY = "clipdlut.recent";
const API_KEY = "clipdlut.api-key";  // asked for once when the service answers 401, kept in this browser
let MAX_PHOTOS = 16;  // a series: one LUT fitted to all its photos (the service's own figure: loadLimits)
let MAX_STRENGTH = 2;  // the strongest blend (the service's own figure: loadLimits)
let MAX_MB = 32;  // the largest photo, in MB (the service's own figure: loadLimits)
const PHOTO_TYPES = /\.(jpe?g|png|webp|tiff?|bmp|gif)$/i;  // what the service decodes (clipdlut/imaging.py)
const DROP_TEXT = $("drop-text").textContent;
let files = [], reference = null, refining = null;  // the chosen photos, reference photo, and task to refine
const MAX_LOOKS = 6;  // candidate looks graded at once (one job each: they batch on the optimizer)
let candidates = [], following = 0;  // the looks of the last submission: [{ id, prompt, status, preview }]
let fileProblem = "";  // why the last photos chosen were refused (said again when Grade it is pressed)
let taskId = null, result = null, polling = null, watching = 0;
let cubeURL = null;  // the shown result's own .cube (at the job's strength), held while it is shown
let originals = [], graded = [], shown = 0;  // the shown job's photos before and after, and the one compared
const held = new Map();  // object URLs by what shows them ("result", "before", "after", "reference", ...)

function hold(owner, ...blobs) {  // object URLs for blobs, the ones ``owner`` held before released
  release(owner);
  const urls = blobs.map((b) => URL.createObjectURL(b));
  held.set(owner, urls);
  return urls;
}

function release(owner) {
  for (const url of held.get(owner) || []) URL.revokeObjectURL(url);
  held.delete(owner);
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function withKey(headers) {  // the headers with this browser's API key, if it keeps one; and the key
  const key = localStorage.getItem(API_KEY);
  if (key) headers.set("Authorization", `Bearer ${key}`);
  return [headers, key];
}

async function api(path, options = {}) {
  const [headers, key] = withKey(new Headers(options.headers));
  return checked(await fetch(path, { ...options, headers }), key);
}

function sendJSON(path, body, onProgress) {  // a POST whose upload reports its progress (fetch reports none)
  const [headers, key] = withKey(new Headers({ "Content-Type": "application/json" }));
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    xhr.responseType = "blob";
    headers.forEach((value, name) => xhr.setRequestHeader(name, value));
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
    xhr.upload.onload = () => onProgress(1, true);
    xhr.onload = () => resolve(checked(new Response(xhr.response, { status: xhr.status,
                                                                   statusText: xhr.statusText }), key));
    xhr.onerror = xhr.onabort = xhr.ontimeout = () => reject(new Error(body.length > MAX_MB * 2 ** 20
      ? `Too large to send: ${(body.length / 2 ** 20).toFixed(1)} MB; send fewer or smaller photos.`
      : "The service could not be reached: check the connection, then try again."));
    xhr.send(body);
  });
}

async function checked(r, key) {  // the response if it is a success, else an Error that says what to do
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
    if (r.status === 413) message = "Too large to send: " + message;
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

function choose(list) {
  showError("");
  if (list.length > MAX_PHOTOS) {
    forgetPhotos();
    return showError(`Choose at most ${MAX_PHOTOS} photos: one look is fitted to a series of up to ${MAX_PHOTOS}.`);
  }
  const wrong = list.find((f) => !(f.type.startsWith("image/") || PHOTO_TYPES.test(f.name)));
  const big = list.find((f) => f.size > MAX_MB * 1024 * 1024);
  fileProblem = !wrong && !big ? ""
    : wrong ? `${wrong.name} is not a photo: choose JPEG, PNG, WebP, TIFF or BMP files.`
      : `${big.name} is ${(big.size / 2 ** 20).toFixed(1)} MB; a photo may be at most ${MAX_MB} MB here.`;
  if (fileProblem) {
    forgetPhotos();
    return showError(fileProblem);
  }
  files = list;
  $("chosen").replaceChildren(...hold("chosen", ...list).map((url, i) => {
    const img = new Image();
    img.src = url;
    img.alt = list[i].name;
    img.title = list[i].name;
    return img;
  }));
  const kb = Math.round(list.reduce((sum, f) => sum + f.size, 0) / 1024);
  $("drop-text").textContent = list.length === 0 ? DROP_TEXT : list.length === 1 ? `${list[0].name} (${kb} KB)`
    : `${list.length} photos, one look for all (${kb} KB): ${list.map((f) => f.name).join(", ")}`;
}

function forgetPhotos() {
  $("file").value = "";
  files = [];
  release("chosen");
  $("chosen").replaceChildren();
  $("drop-text").textContent = DROP_TEXT;
}

function chooseReference(f) {
  reference = f;
  if (!f) $("reference").value = "";
  if (f) [$("reference-thumb").src] = hold("reference", f);
  else release("reference");
  $("reference-thumb").hidden = $("reference-clear").hidden = $("prompt-optional").hidden = !f;
  $("prompt").required = !f;
}

function setRefining(id) {
  refining = id;
  $("refine-note").hidden = !id;
  $("refine-id").textContent = id || "";
  $("prompt").placeholder = id ? "更暖一点 · less green in the shadows" : "赛博朋克风格的夜晚城市";
}

function refine() {
  setRefining(result.task_id);
  $("prompt").value = "";
  $("prompt").focus();
}

function recent() {
  try { return JSON.parse(localStorage.getItem(RECENT_KEY) || "[]"); } catch (e) { return []; }
}

function remember(entry) {
  const list = [entry, ...recent().filter((e) => e.id !== entry.id)].slice(0, 20);
  localStorage.setItem(RECENT_KEY, JSON.stringify(list));
  renderRecent();
}

function note(id, fields) {  // what the list shows of a recent job: its last known status, its thumbnail
  const list = recent().map((e) => (e.id === id ? { ...e, ...fields } : e));
  localStorage.setItem(RECENT_KEY, JSON.stringify(list));
  renderRecent();
}

async function thumbnailOf(file) {  // a small JPEG (a few KB: localStorage keeps it with the job), or null
  try {
    const bitmap = await createImageBitmap(file);
    const scale = 64 / Math.max(bitmap.width, bitmap.height), c = document.createElement("canvas");
    c.width = Math.max(1, Math.round(bitmap.width * scale));
    c.height = Math.max(1, Math.round(bitmap.height * scale));
    c.getContext("2d").drawImage(bitmap, 0, 0, c.width, c.height);
    bitmap.close();
    return c.toDataURL("image/jpeg", 0.7);
  } catch (e) { return null; }
}

// The photos of the last jobs, kept in this browser (IndexedDB: blobs too large for localStorage), so that a job
// reopened from Recent, or after a reload, compares and re-blends against the photos it graded, not its result.
const PHOTO_DB = "clipdlut", KEEP_PHOTOS = 10;

function photoStore(mode) {
  return new Promise((resolve, reject) => {
    const open = indexedDB.open(PHOTO_DB, 1);
    open.onupgradeneeded = () => open.result.createObjectStore("photos");
    open.onsuccess = () => resolve(open.result.transaction("photos", mode).objectStore("photos"));
    open.onerror = () => reject(open.error);
  });
}

async function keepPhotos(id, photos) {  // (the oldest jobs' photos are dropped: KEEP_PHOTOS jobs are kept)
  try {
    const store = await photoStore("readwrite");
    store.put(photos, id);
    const keep = new Set([id, ...recent().slice(0, KEEP_PHOTOS - 1).map((e) => e.id)]);
    const keys = store.getAllKeys();
    keys.onsuccess = () => keys.result.filter((k) => !keep.has(k)).forEach((k) => store.delete(k));
  } catch (e) { /* private browsing or no room: a reopened job then says its photos are gone */ }
}

async function keptPhotos(id) {
  try {
    const store = await photoStore("readonly");
    return await new Promise((resolve) => {
      const get = store.get(id);
      get.onsuccess = () => resolve(get.result || []);
      get.onerror = () => resolve([]);
    });
  } catch (e) { return []; }
}

function renderRecent() {
  const ul = $("recent");
  ul.replaceChildren();
  for (const e of recent()) {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.className = "example";
    b.textContent = `${new Date(e.at).toLocaleString()} · ${e.prompt}${e.status ? ` · ${e.status}` : ""}`;
    if (e.thumb) {
      const img = new Image();
      img.src = e.thumb;
      img.alt = "";
      b.prepend(img);
    }
    b.addEventListener("click", () => openTask(e.id));
    li.append(b);
    ul.append(li);
  }
}

async function submit(ev) {
  ev.preventDefault();
  showError("");
  if (!files.length) {
    return showError(fileProblem || (refining ? "Choose the photos to refine this look on." : "Choose a photo first."));
  }
  const prompts = [...new Set(promptInputs().map((i) => i.value.trim()).filter(Boolean))];
  if (!prompts.length && !reference) {
    return showError(refining ? "Say what to change, e.g. 更暖一点."
                              : "Describe the look you want, e.g. 温暖的金色黄昏胶片, or choose a reference photo.");
  }
  $("submit").disabled = true;
  resetRun();
  showPhase("reading the photos", 0, 1);
  const looks = [];
  try {
    const base = await request("");
    const thumb = thumbnailOf(files[0]);
    const all = prompts.length ? prompts : [""];
    for (const [k, prompt] of all.entries()) {  // (one job a look, sent together: batched)
      const body = prompt ? { ...base, target_prompt: prompt } : base;
      const what = all.length > 1 ? `uploading look ${k + 1} of ${all.length}` : "uploading";
      const r = await sendJSON("/v1/retouch/submit", JSON.stringify(body), (done, sent) => showPhase(
        sent ? "sent: the service is checking the photos" : `${what}: ${5 * Math.floor(20 * done)}%`, done, 1));
      const { task_id } = await r.json();
      remember({ id: task_id, prompt: describe(body), at: Date.now() });
      keepPhotos(task_id, files);
      thumb.then((t) => t && note(task_id, { thumb: t }));
      looks.push({ id: task_id, prompt: prompt || "the reference photo's look", status: "queued" });
    }
    follow(looks);
  } catch (e) {
    const sent = looks.length ? ` (look ${looks.length + 1} was not sent; the ${looks.length} before it were)` : "";
    showError(inFileNames(e.message) + sent);
    $("submit").disabled = false;
    if (!looks.length) $("run").hidden = true;
    else follow(looks);  // (those sent are running: followed, and Stop stops them)
  }
}

function follow(looks) {  // the looks of a submission: the first watched, all of them in the candidates' strip
  originals = files;
  setRefining(null);
  candidates = looks.length > 1 ? looks : [];
  followCandidates(++following);
  watch(looks[0].id);
}

function resetRun() {  // the run panel without the figures of the job before
  $("iteration").textContent = $("total").textContent = "0";
  $("loss").textContent = "–";
  $("preview").hidden = true;
  $("preview").removeAttribute("src");
  candidates = [];
  renderCandidates();
}

function showPhase(words, done, total) {  // the run panel, in view, saying what happens now (uploading 40%, ...)
  const was = !$("run").hidden;
  $("run").hidden = false;
  if ($("state").textContent !== words) $("state").textContent = words;  // (a live region: said once)
  $("bar").max = Math.max(1, total);
  $("bar").value = done;
  if (!was) bringIntoView("run");
}

function bringIntoView(id) {  // (smoothly, unless the reader asked for less motion)
  const still = matchMedia("(prefers-reduced-motion: reduce)").matches;
  $(id).scrollIntoView({ block: "start", behavior: still ? "auto" : "smooth" });
}

function phaseOf(p) {  // a job's progress in the words of what it is doing
  if (p.status === "queued") return "waiting for a free slot on the GPU";
  if (p.status === "running") return p.total && p.iteration >= p.total ? "rendering the full-resolution result"
    : "grading";
  return p.status === "cancelled" ? "stopped" : p.status;
}

function promptInputs() {  // the look's prompt, and those of the other candidate looks
  return [$("prompt"), ...document.querySelectorAll("#more-prompts input")];
}

function addLook(text = "") {  // one more candidate look's prompt (up to MAX_LOOKS)
  if (promptInputs().length >= MAX_LOOKS) return null;
  const input = document.createElement("input");
  input.type = "text";
  input.placeholder = "another look, e.g. 冷色调的清晨";
  input.setAttribute("aria-label", `Look ${promptInputs().length + 1}`);
  input.value = text;
  $("more-prompts").append(input);
  $("add-look").disabled = promptInputs().length >= MAX_LOOKS;
  return input;
}

function renderCandidates() {  // the candidate looks: a preview each, its prompt and state; click one to follow it
  $("candidates").hidden = candidates.length < 2;
  $("candidates").replaceChildren(...candidates.map((c) => {
    const figure = document.createElement("figure");
    const b = document.createElement("button");
    b.type = "button";
    b.title = `Show the look "${c.prompt}"`;
    b.setAttribute("aria-pressed", String(c.id === taskId));
    if (c.preview) {
      const img = new Image();
      img.src = c.preview;
      img.alt = c.prompt;
      b.append(img);
    } else b.textContent = "…";
    b.addEventListener("click", () => { watch(c.id); renderCandidates(); });
    const caption = document.createElement("figcaption");
    caption.textContent = `${c.prompt} · ${c.status}`;
    figure.append(b, caption);
    return figure;
  }));
}

async function followCandidates(round) {  // each candidate's state and preview, until all have ended
  while (round === following && candidates.some((c) => !["finished", "cancelled", "failed"].includes(c.status))) {
    for (const c of candidates) {
      try {
        const r = await api("/v1/progress", { method: "POST", headers: { "Content-Type": "application/json" },
                                              body: JSON.stringify({ task_id: c.id, include_preview: true }) });
        const p = await r.json();
        c.status = p.status === "cancelled" ? "stopped" : p.status;
        c.preview = p.preview || c.preview;
      } catch (e) { c.status = "failed"; }
    }
    if (round !== following) return;
    renderCandidates();
    await new Promise((resolve) => { setTimeout(resolve, 1000); });
  }
  if (round === following) renderCandidates();
}

function inFileNames(message) {  // the service names a photo by its field (images[1], reference_image): say its file
  const name = (k) => (files[k] ? files[k].name : `photo ${k + 1}`);
  return message.replace(/^image: /, `${name(0)}: `).replace(/images\[(\d+)\]/g, (_, k) => name(Number(k)))
    .replace(/^reference_image: /, `${reference ? reference.name : "the reference photo"}: `);
}

async function request(prompt) {
  const photos = await Promise.all(files.map(readAsDataURL));
  const body = {
    steps: Number($("steps").value), lut_size: Number($("lut-size").value), seed: Number($("seed").value),
    keep_blacks: $("keep-blacks").checked, keep_whites: $("keep-whites").checked,
    protect_skin: $("protect-skin").checked,
    mode: $("bw").checked ? "bw" : "color",
  };
  if (photos.length === 1) body.image = photos[0];
  else body.images = photos;
  if (prompt) body.target_prompt = prompt;
  if ($("source").value.trim()) body.source_prompt = $("source").value.trim();
  if (reference) body.reference_image = await readAsDataURL(reference);
  if (refining) body.start_from = refining;
  if ($("input-space").value) {
    Object.assign(body, { input_space: $("input-space").value, display: $("display").value,
                          view: $("view").value, lut_kind: $("lut-kind").value });
  }
  return body;
}

function describe(body) {
  const parts = [body.target_prompt || "the reference photo's look"];
  if (body.images) parts.push(`${body.images.length} photos`);
  if (body.target_prompt && body.reference_image) parts.push("with a reference");
  if (body.start_from) parts.push(`refining ${body.start_from.slice(0, 8)}`);
  if (body.mode === "bw") parts.push("black and white");
  if (body.protect_skin) parts.push("skin protected");
  return parts.join(" · ");
}

function watch(id) {
  taskId = id;
  result = null;
  if ($("run").hidden) showPhase("waiting for the service", 0, 1);
  $("result").hidden = true;
  zoom(false);
  $("stop").disabled = false;
  $("preview").hidden = true;
  clearTimeout(polling);
  poll(id, ++watching);
}

async function poll(id, round) {  // one call at a time: the next is scheduled when this one has answered
  let again = true;
  try {
    const r = await api("/v1/progress", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ task_id: id, include_preview: true }) });
    const p = await r.json();
    if (round !== watching) return;  // another job (or the same one again) is watched now
    if ($("state").textContent !== phaseOf(p)) $("state").textContent = phaseOf(p);  // (a live region: said once)
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
      again = false;
      note(id, { status: phaseOf(p) });
      $("stop").disabled = true;
      $("submit").disabled = false;
      if (p.status === "failed") showError(`The job failed: ${p.error || "no reason given"}`);
      if (p.status === "finished") {
        $("state").textContent = "fetching the result";
        await showResult(id);
        $("state").textContent = "finished";
        bringIntoView("result");
      }
    }
  } catch (e) {
    again = false;
    showError(e.message);
    $("submit").disabled = false;
  }
  if (again && round === watching) polling = setTimeout(() => poll(id, round), 400);
}

async function cancelTask() {  // Stop: the job followed, and every candidate look sent with it
  if (!taskId) return;
  $("stop").disabled = true;
  const ids = new Set([taskId, ...candidates.filter((c) => c.status !== "finished").map((c) => c.id)]);
  try {
    await Promise.all([...ids].map((id) => api(`/v1/retouch/cancel?task_id=${encodeURIComponent(id)}`,
                                               { method: "PUT" })));
  } catch (e) { showError(e.message); }
}

async function showResult(id) {
  const r = await api(`/v1/retouch/get?task_id=${encodeURIComponent(id)}`);
  result = await r.json();
  const photos = result.images && result.images.length ? result.images : [result];
  const blobs = await Promise.all(photos.map(
    async (g) => (await fetch(`data:${g.media_type};base64,${g.image}`)).blob()));
  const cube = new Blob([result.cube], { type: "text/plain" });
  const urls = hold("result", cube, ...blobs);
  cubeURL = urls.shift();
  graded = photos.map((g, i) => ({ ...g, url: urls[i], blob: blobs[i] }));
  // (reopened where this browser no longer has its photos: the result alone, nothing to compare or re-blend)
  const kept = originals.length === photos.length;
  if (!kept) originals = blobs;
  $("split").disabled = !kept;
  $("split").value = kept ? 50 : 0;
  split();
  $("compare-note").hidden = kept;
  const s = result.scores;
  $("scores").textContent = `CLIP similarity to the target look: ${s.source_target.toFixed(3)} before → `
    + `${s.result_target.toFixed(3)} after (direction ${s.directional >= 0 ? "+" : ""}${s.directional.toFixed(3)}); `
    + `${size(result)}, ${result.mode === "bw" ? "black and white, " : ""}${result.steps} steps, `
    + `model ${result.model}, ${result.timings.total_s.toFixed(1)} s.`;
  $("strength").value = 1;
  $("strength-value").textContent = "1.00";
  // (it blends with the identity: a photo's LUT only, and only where its photos are here)
  $("strength").disabled = Boolean(result.input_space) || !kept;
  // (a blend towards the identity keeps skin's bound; one beyond the look would not)
  $("strength").max = result.skin && result.skin.protected ? 1 : MAX_STRENGTH;
  $("strength").title = result.input_space
    ? `footage (${result.input_space}): the LUT includes the conversion to the display; set the strength on the job`
    : kept ? "" : "this job's photos are no longer kept in this browser";
  lutLinks();
  renderStrip();
  select(0);
  $("result").hidden = false;
}

function size(res) {
  const first = `${res.width}×${res.height}`;
  return res.images && res.images.length ? `${res.images.length} photos graded with one look (the first ${first})` : first;
}

function qualityText(q) {
  const kept = q && q.ssim !== null ? `Content kept (SSIM of luminance) ${q.ssim.toFixed(3)}` : `(${q && q.note})`;
  return q ? `${kept}; mean colour shift `
    + `${q.color_shift.toFixed(1)} ΔE; LUT safe on any footage: ${q.safe ? "yes" : "no"} (steepest slope `
    + `${q.max_slope.toFixed(2)}, smallest own-axis step ${q.min_own_step.toFixed(2)} levels).` : "";
}

function summaryText(res, q) {  // the figures in words (the figures themselves are in the fold below)
  const d = res.scores.directional;
  const aim = res.mode === "bw" ? "into black and white" : `${d > 0.15 ? "clearly" : d > 0 ? "a little" : "hardly"}`
    + " towards the look asked for";
  const how = !q ? "" : q.color_shift < 2 ? "a subtle grade" : q.color_shift < 6 ? "a moderate grade" : "a strong grade";
  const detail = !q || q.ssim === null ? "" : q.ssim > 0.9 ? "the photo's detail is intact"
    : "some tones were pressed together";
  const skin = res.skin && res.skin.protected ? "skin tones kept" : "";
  const safe = !q ? "" : q.safe ? "the LUT is safe to use on any photo or footage"
    : "the LUT carries the display transform's own steep places (see the figures)";
  return `The grade moved ${res.images && res.images.length ? "the photos" : "the photo"} ${aim}: `
    + `${[how, detail, skin].filter(Boolean).join(", ")}; ${safe}.`;
}

function skinText(skin) {  // how far the look moved skin tones (the worst skin colour)
  return skin ? ` Skin tones${skin.protected ? " (protected)" : ""}: hue moved at most ${skin.hue_shift.toFixed(1)}°, `
    + `colour at most ${skin.delta_e.toFixed(1)} ΔE.` : "";
}

function lookName() {  // the look's words as a file-name stem (its .cube's TITLE), as /v1/lut names its files
  const title = (/^TITLE "(.*)"$/m.exec(result.cube) || [])[1] || "";
  const stem = title.normalize("NFKC").toLowerCase().replace(/[^\p{L}\p{N}]+/gu, "-").replace(/^-+|-+$/g, "");
  return stem && title !== "CLIP-DLUT" ? stem.slice(0, 48).replace(/-+$/, "") : "clipdlut";
}

function imageName(i, ext = graded[i].media_type.split("/")[1], tag = "") {  // IMG_1234-warm-golden-hour.jpg
  const own = originals[i] && originals[i].name ? originals[i].name.replace(/\.[^.]*$/, "") : `photo-${i + 1}`;
  return `${own}-${lookName()}${tag}.${ext === "jpeg" ? "jpg" : ext}`;
}

function lutName(tag, kind, suffix) {  // warm-golden-hour_33.cube, warm-golden-hour-50pct_hald.png
  return `${lookName()}${tag}_${kind}${suffix}`;
}

function renderStrip() {
  $("strip").replaceChildren(...(graded.length > 1 ? graded.map(stripItem) : []));
  $("strip").hidden = graded.length < 2;
}

function stripItem(g, i) {
  const figure = document.createElement("figure");
  const show = document.createElement("button");
  show.type = "button";
  show.title = `Compare photo ${i + 1} before and after`;
  const img = document.createElement("img");
  img.src = g.url;
  img.alt = `Graded photo ${i + 1}`;
  show.append(img);
  show.addEventListener("click", () => select(i));
  const link = document.createElement("a");
  link.href = g.url;
  link.download = imageName(i);
  link.textContent = `Photo ${i + 1} (${g.width}×${g.height})`;
  figure.append(show, link);
  return figure;
}

function select(i) {  // photo i of the result in the comparison, at the chosen strength
  shown = i;
  zoom(false);
  showBefore(false);
  [$("before").src] = hold("before", originals[i]);
  release("after");
  $("after").src = graded[i].url;
  $("quality").textContent = qualityText(graded[i].quality) + skinText(result.skin);
  $("summary").textContent = summaryText(result, graded[i].quality);
  $("dl-image").textContent = graded.length > 1 ? `Full-resolution image (photo ${i + 1})` : "Full-resolution image";
  $("strip").querySelectorAll("button").forEach((b, j) => b.setAttribute("aria-pressed", String(j === i)));
  imageLink();
  prepareLive(i);
}

// Strength in the browser: the look blended and applied here to a screen-sized copy of the photo, at each move of
// the slider (trilinear, as Pillow applies a LUT to the full-resolution image when it is downloaded).
const LIVE_SIDE = 1024;  // the copy's longest side, in pixels
let live = null;  // { pixels: the copy's ImageData, table: the look's Float32Array [b][g][r][c], n }

function cubeTable(text) {  // a .cube's table as floats, in its own row order (red fastest): [b][g][r][c]
  let n = 0, lo = [0, 0, 0], hi = [1, 1, 1];
  const values = [];
  for (const line of text.split("\n")) {
    const t = line.trim().split(/\s+/);
    if (t[0] === "LUT_3D_SIZE") n = Number(t[1]);
    else if (t[0] === "DOMAIN_MIN") lo = t.slice(1, 4).map(Number);
    else if (t[0] === "DOMAIN_MAX") hi = t.slice(1, 4).map(Number);
    else if (t.length === 3 && /^[-+.\d]/.test(t[0])) values.push(...t.map(Number));
  }
  const table = Float32Array.from(values, (v, k) => (v - lo[k % 3]) / (hi[k % 3] - lo[k % 3]));
  return { n, table };
}

async function prepareLive(i) {
  live = null;
  $("after-live").hidden = true;
  delete $("after-live").dataset.ready;
  if ($("strength").disabled) return;
  const bitmap = await createImageBitmap(originals[i]);
  const scale = Math.min(1, LIVE_SIDE / Math.max(bitmap.width, bitmap.height));
  const canvas = $("after-live");
  canvas.width = Math.max(1, Math.round(bitmap.width * scale));
  canvas.height = Math.max(1, Math.round(bitmap.height * scale));
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  bitmap.close();
  if (shown !== i) return;  // another photo was chosen meanwhile
  live = { pixels: ctx.getImageData(0, 0, canvas.width, canvas.height), ...cubeTable(result.cube) };
  canvas.dataset.ready = "true";  // (the slider redraws from here on)
  drawLive();
}

function drawLive() {  // the preview at the slider's strength; returns the milliseconds it took (the tests read it)
  const t0 = performance.now(), s = Number($("strength").value);
  const own = !live || s === result.strength;
  $("after-live").hidden = own;
  if (own) return 0;
  const { pixels, table, n } = live, src = pixels.data, out = new ImageData(pixels.width, pixels.height);
  const dst = out.data, f = (n - 1) / 255, k = result.strength ? s / result.strength : 0;  // (the .cube is at
  //                                                                                          the job's strength)
  const blended = new Float32Array(table.length);
  for (let j = 0; j < table.length; j += 3) {  // I + k (T - I): the look at strength s, from the one at the job's
    const node = j / 3, r = node % n, g = Math.floor(node / n) % n, b = Math.floor(node / (n * n));
    const id = [r, g, b];
    for (let c = 0; c < 3; c++) blended[j + c] = 255 * (id[c] / (n - 1) + k * (table[j + c] - id[c] / (n - 1)));
  }
  const sg = 3 * n, sb = 3 * n * n;
  for (let p = 0; p < src.length; p += 4) {
    const x = src[p] * f, y = src[p + 1] * f, z = src[p + 2] * f;
    const r0 = Math.min(x | 0, n - 2), g0 = Math.min(y | 0, n - 2), b0 = Math.min(z | 0, n - 2);
    const dr = x - r0, dg = y - g0, db = z - b0, base = 3 * r0 + sg * g0 + sb * b0;
    for (let c = 0; c < 3; c++) {
      const i = base + c;
      const c00 = blended[i] + dr * (blended[i + 3] - blended[i]);
      const c10 = blended[i + sg] + dr * (blended[i + sg + 3] - blended[i + sg]);
      const c01 = blended[i + sb] + dr * (blended[i + sb + 3] - blended[i + sb]);
      const c11 = blended[i + sb + sg] + dr * (blended[i + sb + sg + 3] - blended[i + sb + sg]);
      const c0 = c00 + dg * (c10 - c00), c1 = c01 + dg * (c11 - c01);
      dst[p + c] = c0 + db * (c1 - c0);  // (clamped and rounded by the Uint8ClampedArray)
    }
    dst[p + 3] = src[p + 3];
  }
  $("after-live").getContext("2d").putImageData(out, 0, 0);
  return performance.now() - t0;
}

function imageLink() {  // the full-resolution photo at the slider's strength, rendered by /v1/apply when downloaded
  const a = $("dl-image"), i = shown, [at, tag] = atStrength(), job = snapshot();
  a.onclick = null;
  release("dl-image");
  if (!tag) return setLink("dl-image", graded[i].url, imageName(i));
  a.removeAttribute("href");
  a.download = imageName(i, undefined, tag);
  a.onclick = async (ev) => {
    if (a.href) return;  // rendered already: the browser downloads it
    ev.preventDefault();
    a.setAttribute("aria-busy", "true");
    try {
      const blob = await renderedWith(job.originals[i], await lutAt(job.task, at));
      if (!showing(job.task) || shown !== i || atStrength()[1] !== tag) return;  // moved on meanwhile
      [a.href] = hold("dl-image", blob);
      a.click();
    } catch (e) {
      if (showing(job.task)) showError(`The full-resolution image could not be made (${e.message}); try again.`);
    } finally { a.removeAttribute("aria-busy"); }
  };
}

function snapshot() {  // what a download started now needs of the shown job, kept should another be shown meanwhile
  return { task: result.task_id, originals: [...originals], graded: [...graded], cube: result.cube,
           size: result.lut_size, names: graded.map((_, k) => (tag) => imageName(k, undefined, tag)),
           look: lookName() };
}

function showing(task) {  // the job shown is still ``task``
  return Boolean(result) && result.task_id === task;
}

async function lutAt(task, options) {  // a job's LUT as /v1/lut writes it (at a strength: blended and made safe)
  const r = await api("/v1/lut", { method: "POST", headers: { "Content-Type": "application/json" },
                                   body: JSON.stringify({ task_id: task, ...options }) });
  return r.blob();
}

async function renderedWith(original, lut) {  // a photo graded by a LUT on the service (its own format, EXIF kept)
  const form = new FormData();
  form.append("image", original, original.name || "photo");
  form.append("lut", lut, "look.cube");
  return (await api("/v1/apply", { method: "POST", body: form })).blob();
}

async function downloadAll() {  // one zip: every graded photo at the slider's strength, the .cube, the Hald PNG
  const a = $("dl-all"), [at, tag] = atStrength(), job = snapshot();
  if (a.getAttribute("aria-busy")) return;
  a.setAttribute("aria-busy", "true");
  const say = (words) => { $("zip-state").textContent = words; };
  try {
    const cube = tag ? await lutAt(job.task, at) : new Blob([job.cube]);
    const bytes = async (blob) => new Uint8Array(await blob.arrayBuffer());
    const zipped = { [`${job.look}${tag}_${job.size}.cube`]: await bytes(cube),
                     [`${job.look}${tag}_hald.png`]: [await bytes(await lutAt(job.task, { format: "hald", ...at })),
                                                       { level: 0 }] };
    for (const [i, g] of job.graded.entries()) {  // (images are compressed already: stored as they are)
      say(tag ? `Rendering photo ${i + 1} of ${job.graded.length} at full resolution…` : "Packing…");
      const image = tag ? await renderedWith(job.originals[i], cube) : g.blob;
      const name = job.names[i](tag);
      zipped[name in zipped ? `${i + 1}-${name}` : name] = [await bytes(image), { level: 0 }];
    }
    if (!showing(job.task)) return say("");  // another result is shown now
    const link = document.createElement("a");
    [link.href] = hold("dl-all", new Blob([zipSync(zipped)], { type: "application/zip" }));
    link.download = `${job.look}${tag}.zip`;
    link.click();
    setTimeout(() => release("dl-all"), 60_000);  // (the zip may be large: let it go once downloaded)
    say("");
  } catch (e) {
    say(showing(job.task) ? `Download all stopped (${e.message}): try again.` : "");
  } finally { a.removeAttribute("aria-busy"); }
}

function onDemand(id, options, name) {  // a LUT of another size or format, fetched when its link is clicked
  const a = $(id), task = result.task_id;
  release(id);
  a.removeAttribute("href");
  a.download = name;
  a.onclick = async (ev) => {
    if (a.href) return;  // fetched already: the browser downloads it
    ev.preventDefault();
    try {
      const blob = await lutAt(task, options);
      if (!showing(task)) return;  // another result is shown now
      [a.href] = hold(id, blob);
      a.click();
    } catch (e) { if (showing(task)) showError(e.message); }
  };
}

function atStrength() {  // the strength on the slider as /v1/lut options and a file-name tag (none: the job's own)
  const s = Number($("strength").value);
  return s === result.strength ? [{}, ""] : [{ strength: s }, `-${Math.round(s * 100)}pct`];
}

function lutLinks() {  // every LUT download at the strength on the slider (baked in by /v1/lut, made safe)
  const [at, tag] = atStrength();
  if (tag) onDemand("dl-cube", at, lutName(tag, result.lut_size, ".cube"));
  else {
    $("dl-cube").onclick = null;
    setLink("dl-cube", cubeURL, lutName("", result.lut_size, ".cube"), `.cube (${result.lut_size})`);
  }
  for (const n of [17, 33, 65]) {  // (the job's own size is the first link already)
    $(`dl-cube-${n}`).hidden = n === result.lut_size;
    onDemand(`dl-cube-${n}`, { size: n, ...at }, lutName(tag, n, ".cube"));
  }
  onDemand("dl-hald", { format: "hald", ...at }, lutName(tag, "hald", ".png"));
  formatLink();
}

function formatLink() {  // the LUT in the format chosen in the list (the service's own list: /v1/limits)
  const option = $("lut-format").selectedOptions[0];
  if (!result || !option) return;
  const [at, tag] = atStrength();
  const flavour = { "resolve-cube": "-resolve", "3dl-lustre": "-lustre" }[option.value] || "";
  const name = lutName(tag, `${result.lut_size}${flavour}`, option.dataset.suffix);
  onDemand("dl-format", { format: option.value, size: result.lut_size, ...at }, name);
}

function setLink(id, href, name, text) {
  const a = $(id);
  a.href = href;
  a.download = name;
  if (text) a.textContent = text;
}

function restrength() {  // a settled strength: the downloads follow it (the preview followed each move)
  $("strength-value").textContent = Number($("strength").value).toFixed(2);
  if (!result) return;
  lutLinks();
  imageLink();
}

async function openTask(id) {
  showError("");
  forgetPhotos();
  candidates = [];
  following += 1;
  renderCandidates();
  originals = await keptPhotos(id);
  watch(id);
}

async function resumeLast() {  // after a reload: the last job, if it is still running, is watched again
  const last = recent()[0];
  if (!last || last.status) return;
  try {
    const r = await api(`/v1/retouch/status?task_id=${encodeURIComponent(last.id)}`);
    if ((await r.json()).status === "in_progress") await openTask(last.id);
  } catch (e) { /* gone or not reachable: the list still offers it */ }
}

function split() {  // before on the left of the handle, after on its right (as Lightroom shows them)
  const at = Number($("split").value);
  $("after").style.clipPath = $("after-live").style.clipPath = `inset(0 0 0 ${at}%)`;
  $("handle").style.left = `${at}%`;
  $("handle").hidden = $("split").disabled;
}

function showBefore(on) {  // the whole photo before the grade, while held (or toggled with the \\ key)
  $("compare").classList.toggle("before-only", on);
}

// The viewer: fitted to the window by the style sheet; at 1:1 one photo pixel is one screen pixel, and the photo
// scrolls inside the fitted frame (dragged, or with the scroll bars and wheel).
function zoom(on, at = null) {  // at: the point (client coordinates) to keep under the pointer
  const viewport = $("viewport"), stage = $("stage"), img = $("before");
  if (on === zoomed()) return;
  if (!on) {
    $("compare").classList.remove("zoomed");
    $("zoom").setAttribute("aria-pressed", "false");
    afterTag();
    viewport.style.width = viewport.style.height = stage.style.width = "";
    return;
  }
  const fit = viewport.getBoundingClientRect(), scale = img.naturalWidth / devicePixelRatio / fit.width;
  if (!img.complete || !img.naturalWidth || !fit.width) return;  // (a photo still loading: its size is not known)
  $("zoom").setAttribute("aria-pressed", "true");
  viewport.style.width = `${fit.width}px`;
  viewport.style.height = `${fit.height}px`;
  stage.style.width = `${img.naturalWidth / devicePixelRatio}px`;
  $("compare").classList.add("zoomed");
  afterTag();
  const [x, y] = at ? [at.clientX - fit.left, at.clientY - fit.top] : [fit.width / 2, fit.height / 2];
  viewport.scrollLeft = x * scale - x;
  viewport.scrollTop = y * scale - y;
}

function afterTag() {  // the strength preview is a screen-sized copy: at 1:1 the after side is the job's own result
  document.querySelector("#compare .after-tag").textContent = zoomed() && !$("after-live").hidden
    ? `After, at strength ${result.strength.toFixed(2)}` : "After";
}

function zoomed() {
  return $("compare").classList.contains("zoomed");
}

let drag = null;  // what a pointer held on the photo does: "split" (the handle), "pan" (at 1:1) or "before"

function pointerDown(ev) {
  const viewport = $("viewport");
  const onScrollBar = ev.offsetX >= viewport.clientWidth || ev.offsetY >= viewport.clientHeight;
  if (ev.button !== 0 || !ev.isPrimary || $("result").hidden || (ev.target === viewport && onScrollBar)) return;
  if (ev.target !== $("handle") && !zoomed() && $("split").disabled) return;  // (no photo before to show)
  drag = ev.target === $("handle") ? { kind: "split" }
    : zoomed()
      ? { kind: "pan", x: ev.clientX, y: ev.clientY, left: viewport.scrollLeft, top: viewport.scrollTop }
      : { kind: "before" };
  viewport.setPointerCapture(ev.pointerId);
  if (drag.kind === "before") showBefore(true);
  viewport.classList.toggle("panning", drag.kind === "pan");
  ev.preventDefault();
}

function pointerMove(ev) {
  if (!drag) return;
  const viewport = $("viewport");
  if (drag.kind === "pan") {
    viewport.scrollLeft = drag.left - (ev.clientX - drag.x);
    viewport.scrollTop = drag.top - (ev.clientY - drag.y);
  } else if (drag.kind === "split") {
    const box = $("stage").getBoundingClientRect();
    $("split").value = Math.round(1000 * Math.min(1, Math.max(0, (ev.clientX - box.left) / box.width))) / 10;
    split();
  }
}

function pointerUp() {
  if (drag && drag.kind === "before") showBefore(false);
  drag = null;
  $("viewport").classList.remove("panning");
}

$("file").addEventListener("change", () => choose([...$("file").files]));
$("reference").addEventListener("change", () => chooseReference($("reference").files[0] || null));
$("reference-clear").addEventListener("click", () => chooseReference(null));
$("refine").addEventListener("click", refine);
$("refine-cancel").addEventListener("click", () => setRefining(null));
$("drop").addEventListener("dragover", (e) => { e.preventDefault(); $("drop").classList.add("over"); });
$("drop").addEventListener("dragleave", () => $("drop").classList.remove("over"));
$("drop").addEventListener("drop", (e) => {
  e.preventDefault();
  $("drop").classList.remove("over");
  if (e.dataTransfer.files.length) choose([...e.dataTransfer.files]);
});
for (const b of document.querySelectorAll(".examples button")) {  // (into the first empty look, else the first)
  b.addEventListener("click", () => {
    const input = promptInputs().find((i) => !i.value.trim()) || $("prompt");
    input.value = b.textContent;
    input.focus();
  });
}
$("add-look").addEventListener("click", () => addLook()?.focus());
$("form").addEventListener("submit", submit);
function showKept() {
  $("key-kept").hidden = !localStorage.getItem(API_KEY);
}
$("key-box").addEventListener("submit", (ev) => {
  ev.preventDefault();
  localStorage.setItem(API_KEY, $("api-key").value.trim());
  $("api-key").value = "";
  $("key-box").hidden = true;
  showKept();
  showError("");
  if (taskId && !result) watch(taskId);  // a job whose progress was refused: follow it again
});
$("forget-key").addEventListener("click", () => {  // (a shared computer: the next user is asked again)
  localStorage.removeItem(API_KEY);
  showKept();
});
$("stop").addEventListener("click", cancelTask);
$("strength").addEventListener("change", restrength);
$("strength").addEventListener("input", () => {
  $("strength-value").textContent = Number($("strength").value).toFixed(2);
  if (result) window.lastStrengthDrawMs = drawLive();  // (read by the browser tests)
  if (result) afterTag();
});
$("split").addEventListener("input", split);
$("viewport").addEventListener("pointerdown", pointerDown);
$("viewport").addEventListener("pointermove", pointerMove);
for (const ev of ["pointerup", "pointercancel", "lostpointercapture"]) $("viewport").addEventListener(ev, pointerUp);
$("viewport").addEventListener("dblclick", (ev) => zoom(!zoomed(), ev));
$("zoom").addEventListener("click", () => zoom(!zoomed()));
let windowWidth = innerWidth;  // (a phone's browser bars come and go as the page scrolls: only a new width counts)
window.addEventListener("resize", () => {  // the frame fitted to another window: fit again
  if (innerWidth !== windowWidth) zoom(false);
  windowWidth = innerWidth;
});
document.addEventListener("keydown", (ev) => {  // \\: before / after, as in Lightroom; Z: 1:1 (not while typing)
  const typing = ev.target.matches("input:not([type=range], [type=checkbox]), textarea, select, [contenteditable]");
  if ($("result").hidden || typing || ev.ctrlKey || ev.metaKey || ev.altKey || ev.repeat) return;
  if (ev.key === "\\" && !$("split").disabled) showBefore(!$("compare").classList.contains("before-only"));
  if (ev.key === "z" || ev.key === "Z") zoom(!zoomed());
});
$("lut-format").addEventListener("change", formatLink);
$("dl-all").addEventListener("click", downloadAll);
async function loadLimits() {  // the service's limits, from the service (never copied here)
  try {
    const limits = await (await api("/v1/limits", { method: "POST" })).json();
    MAX_PHOTOS = limits.max_photos;
    $("prompt").maxLength = $("source").maxLength = limits.max_prompt_chars;
    $("steps").max = limits.max_steps;
    MAX_MB = limits.max_body_mb;
    MAX_STRENGTH = $("strength").max = limits.max_strength;
    for (const f of limits.lut_formats) {
      const option = new Option(`${f.name} (${f.suffix})`, f.name);
      option.dataset.suffix = f.suffix;
      option.title = f.where;
      $("lut-format").add(option);
    }
    formatLink();
  } catch (e) { /* the service answers with the same limits when a job is sent */ }
}
let footage = null;  // the OCIO config's names, from the service (/v1/footage)
function fill(id, values, selected) {
  const select = $(id);
  select.replaceChildren(...values.map(([value, text]) => new Option(text, value, false, value === selected)));
}
function footageChanged() {
  const on = Boolean($("input-space").value) && footage;
  for (const id of ["display", "view", "lut-kind"]) $(id).disabled = !on;
  if (!footage) return;
  const display = $("display").value || footage.default_display;
  fill("view", footage.displays[display].map((v) => [v, v]), footage.default_views[display]);
}
async function loadFootage() {
  try {
    footage = await (await api("/v1/footage", { method: "POST" })).json();
  } catch (e) { return; /* the photo path needs none of it */ }
  for (const space of footage.input_spaces) $("input-space").add(new Option(space, space));
  fill("display", Object.keys(footage.displays).map((d) => [d, d]), footage.default_display);
  fill("lut-kind", Object.entries(footage.lut_kinds).map(([k, words]) => [k, `${k}: ${words.split(":")[0]}`]),
       "display");
  footageChanged();
}
$("input-space").addEventListener("change", footageChanged);
$("bw").addEventListener("change", () => {  // (a black-and-white look has no skin colour to keep)
  $("protect-skin").disabled = $("bw").checked;
  if ($("bw").checked) $("protect-skin").checked = false;
});
$("display").addEventListener("change", footageChanged);
renderRecent();
resumeLast();
showKept();
split();
loadLimits();
loadFootage();
