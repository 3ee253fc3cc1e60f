// The vae-mnist page. It talks to nothing but this service's public API (/v1/*).

const $ = (id) => document.getElementById(id);
const DEBOUNCE_MS = 250;
const STROKE = 20; // px on the 280 px pad: about MNIST's stroke once scaled to 20x20
const GAP = 2; // px between the images of a grid, as the service draws its PNG grids

const state = {
  version: null, // the model version the page last described
  shape: [28, 28],
  samples: null, // the last /v1/sample JSON: its z are interpolation ends
  ends: { A: null, B: null }, // PNG blobs of two drawings
};

// ---------------------------------------------------------------- API and messages

/** fetch() that throws an Error saying what went wrong, from the problem+json `detail`. */
async function api(path, init = {}) {
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new Error(`The service did not answer (${err.message}).`);
  }
  noticeVersion(response.headers.get("x-model-version"));
  if (!response.ok) throw await problemOf(response);
  return response;
}

async function problemOf(response) {
  let title = response.statusText || "Error";
  let detail = "";
  try {
    const problem = await response.json();
    title = problem.title || title;
    detail = problem.detail || "";
  } catch {
    // Not JSON: the status line says enough.
  }
  return new Error(`${response.status} ${title}${detail ? `: ${detail}` : ""}`);
}

function say(section, text) {
  $(`${section}-status`).textContent = text;
}

/** A request of this section worked: say so, and take down its last error. */
function succeed(section, text) {
  say(section, text);
  $(`${section}-error`).hidden = true;
}

function fail(section, err) {
  if (err.name === "AbortError") return;
  $(`${section}-status`).textContent = "";
  const box = $(`${section}-error`);
  box.textContent = err.message;
  box.hidden = false;
}

/** A response from another model version than the one described: describe the new one. */
function noticeVersion(header) {
  if (header && state.version !== null && header !== state.version) {
    state.version = header; // before loading, so that the load itself does not trigger another
    loadModel();
  }
}

// ---------------------------------------------------------------- pixels

/** Rows of pixel values in [0, 1] as a PNG data URL: white ink on black, `columns` wide. */
function pixelsToUrl(rows, [height, width], columns = 1) {
  const gridRows = Math.ceil(rows.length / columns);
  const canvas = document.createElement("canvas");
  canvas.width = columns * width + (columns - 1) * GAP;
  canvas.height = gridRows * height + (gridRows - 1) * GAP;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#808080";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  rows.forEach((row, i) => {
    const image = ctx.createImageData(width, height);
    row.forEach((value, p) => {
      const grey = Math.round(255 * Math.min(1, Math.max(0, value)));
      image.data.set([grey, grey, grey, 255], 4 * p);
    });
    const x = (i % columns) * (width + GAP);
    const y = Math.floor(i / columns) * (height + GAP);
    ctx.putImageData(image, x, y);
  });
  return canvas.toDataURL("image/png");
}

function showImage(img, src, alt) {
  if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  img.src = src;
  img.alt = alt;
  img.hidden = false;
}

const blank = () => pixelsToUrl([new Array(state.shape[0] * state.shape[1]).fill(0)], state.shape);

// ---------------------------------------------------------------- draw

const pad = $("pad");
const pen = pad.getContext("2d");
let inked = false;
let last = null;
let timer = null;
let inFlight = null; // the AbortController of the reconstruct request in flight

function clearPad() {
  pen.fillStyle = "#000";
  pen.fillRect(0, 0, pad.width, pad.height);
  inked = false;
  clearTimeout(timer);
  inFlight?.abort();
  showImage($("seen"), blank(), "The 28x28 input the model saw: nothing drawn yet");
  showImage($("recon"), blank(), "Reconstruction: nothing drawn yet");
  succeed("draw", "");
}

function padPoint(event) {
  const rect = pad.getBoundingClientRect();
  return [
    ((event.clientX - rect.left) * pad.width) / rect.width,
    ((event.clientY - rect.top) * pad.height) / rect.height,
  ];
}

function stroke(points) {
  pen.strokeStyle = "#fff";
  pen.lineWidth = STROKE;
  pen.lineCap = "round";
  pen.lineJoin = "round";
  pen.beginPath();
  pen.moveTo(...points[0]);
  for (const point of points.length > 1 ? points.slice(1) : points) pen.lineTo(...point);
  pen.stroke();
  inked = true;
  clearTimeout(timer);
  timer = setTimeout(reconstruct, DEBOUNCE_MS);
}

pad.addEventListener("pointerdown", (event) => {
  if (!event.isPrimary || event.button !== 0) return; // one finger; no right button
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  last = padPoint(event);
  stroke([last]);
});
pad.addEventListener("pointermove", (event) => {
  if (last === null) return;
  const points = event.getCoalescedEvents?.().map(padPoint) ?? [padPoint(event)];
  stroke([last, ...points]);
  last = points[points.length - 1];
});
for (const type of ["pointerup", "pointercancel"]) {
  pad.addEventListener(type, () => {
    last = null;
  });
}

const padBlob = () => new Promise((resolve) => pad.toBlob(resolve, "image/png"));

async function reconstruct() {
  if (!inked) return;
  inFlight?.abort();
  const controller = new AbortController();
  inFlight = controller;
  say("draw", "Reconstructing…");
  try {
    const response = await api("/v1/reconstruct", {
      method: "POST",
      headers: { "Content-Type": "image/png", Accept: "application/json" },
      body: await padBlob(),
      signal: controller.signal,
    });
    const result = await response.json();
    if (controller.signal.aborted) return;
    state.shape = result.image_shape;
    const [h, w] = result.image_shape;
    showImage($("seen"), pixelsToUrl(result.inputs, result.image_shape),
      `The ${h}x${w} input the model saw: your drawing cropped, centred and binarised`);
    showImage($("recon"), pixelsToUrl(result.probs, result.image_shape),
      `Reconstruction of your drawing by model version ${result.model_version}`);
    succeed("draw", `Reconstructed by model version ${result.model_version}.`);
  } catch (err) {
    fail("draw", err);
  }
}

// Example strokes, in units of the pad, for those who cannot draw with a pointer.
const EXAMPLES = [
  [[[0.3, 0.27], [0.7, 0.27], [0.45, 0.8]]],
  [[[0.32, 0.33], [0.4, 0.24], [0.55, 0.22], [0.66, 0.3], [0.66, 0.42], [0.32, 0.78], [0.72, 0.78]]],
  [[[0.33, 0.25], [0.63, 0.25], [0.48, 0.46], [0.64, 0.56], [0.64, 0.72], [0.5, 0.8], [0.32, 0.76]]],
  [[[0.62, 0.8], [0.62, 0.2], [0.3, 0.62], [0.74, 0.62]]],
  [Array.from({ length: 25 }, (_, i) => [
    0.5 + 0.17 * Math.sin((2 * Math.PI * i) / 24),
    0.5 - 0.29 * Math.cos((2 * Math.PI * i) / 24),
  ])],
];
let nextExample = 0;

$("example").addEventListener("click", () => {
  clearPad();
  for (const line of EXAMPLES[nextExample]) stroke(line.map(([x, y]) => [x * pad.width, y * pad.height]));
  nextExample = (nextExample + 1) % EXAMPLES.length;
});
$("clear").addEventListener("click", clearPad);

for (const end of ["A", "B"]) {
  $(`use-${end.toLowerCase()}`).addEventListener("click", async () => {
    if (!inked) {
      fail("draw", new Error(`Draw a digit first, then use it as ${end}.`));
      return;
    }
    state.ends[end] = await padBlob();
    showImage($(`end-${end.toLowerCase()}`), URL.createObjectURL(state.ends[end]), `Drawing ${end}`);
    say("draw", `Your drawing is end ${end} of the interpolation.`);
  });
}

// ---------------------------------------------------------------- sample

$("sample-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sample();
});
$("new-seed").addEventListener("click", () => {
  $("seed").value = String(Math.floor(Math.random() * 2 ** 31));
  sample();
});

async function sample() {
  const n = $("n").value.trim();
  const seed = $("seed").value.trim();
  const temperature = $("temperature").value.trim();
  const query = new URLSearchParams({ n, seed, temperature });
  for (const name of ["prior", "digit"]) {
    const value = $(name).value;
    if (value) query.set(name, value);
  }
  say("sample", "Sampling…");
  try {
    const response = await api(`/v1/sample?${query}`, { headers: { Accept: "application/json" } });
    const result = await response.json();
    state.samples = result;
    const columns = Math.ceil(Math.sqrt(result.probs.length));
    const what = `${result.probs.length} ${result.digit === null ? "digits" : `${result.digit}s`}`;
    showImage($("samples"), pixelsToUrl(result.probs, result.image_shape, columns),
      `${what} sampled by model version ${result.model_version} from the ${result.prior} ` +
      `prior, seed ${result.seed}, temperature ${result.temperature}, numbered left to right`);
    succeed("sample", `${what} from the ${result.prior} prior, seed ${result.seed}, ` +
      "numbered left to right.");
  } catch (err) {
    fail("sample", err);
  }
}

// ---------------------------------------------------------------- interpolate

$("interpolate-form").addEventListener("submit", (event) => {
  event.preventDefault();
  interpolate();
});

function interpolationBody() {
  const ends = new FormData($("interpolate-form")).get("ends");
  if (ends === "drawings") {
    if (!state.ends.A || !state.ends.B) {
      throw new Error("Set both ends first: draw a digit and press Use as A, then another and Use as B.");
    }
    const files = new FormData();
    files.append("files", state.ends.A, "a.png");
    files.append("files", state.ends.B, "b.png");
    return [files, "drawings A and B"];
  }
  const z = state.samples?.z;
  if (!z) throw new Error("Sample a grid first: its samples are the ends.");
  const [from, to] = [Number($("from").value), Number($("to").value)];
  for (const i of [from, to]) {
    if (!Number.isInteger(i) || i < 1 || i > z.length) {
      throw new Error(`Sample numbers go from 1 to ${z.length}; got ${$("from").value} and ${$("to").value}.`);
    }
  }
  return [JSON.stringify({ z: [z[from - 1], z[to - 1]] }), `samples ${from} and ${to}`];
}

async function interpolate() {
  let body, ends;
  try {
    [body, ends] = interpolationBody();
  } catch (err) {
    fail("interpolate", err);
    return;
  }
  const query = new URLSearchParams({ steps: $("steps").value.trim(), method: $("method").value, scale: 3 });
  const headers = typeof body === "string" ? { "Content-Type": "application/json" } : {};
  say("interpolate", "Interpolating…");
  try {
    const response = await api(`/v1/interpolate?${query}`, { method: "POST", headers, body });
    const version = response.headers.get("x-model-version");
    showImage($("strip"), URL.createObjectURL(await response.blob()),
      `${query.get("steps")} digits on the ${query.get("method")} path between ${ends}, ` +
      `decoded by model version ${version}`);
    succeed("interpolate", `From ${ends}, left to right.`);
  } catch (err) {
    fail("interpolate", err);
  }
}

// ---------------------------------------------------------------- model

const sentence = (text) => `${text.charAt(0).toUpperCase()}${text.slice(1)}.`;
const nats = (value) => (typeof value === "number" ? `${value.toFixed(1)} nats` : "not recorded");

function describe(facts) {
  for (const [id, text] of Object.entries(facts)) $(id).textContent = text;
}

async function loadModel() {
  try {
    const models = await (await api("/v1/models")).json();
    const serving = models.serving;
    state.version = serving ? String(serving.version) : "none";
    if (!serving) {
      describe({ "model-version": "none", "model-source": "—", "model-latent": "—",
        "model-preset": "—", "model-elbo": "—", "model-iwae": "—", "model-prior": "—" });
      fail("model", new Error(`No model is ready: ${models.detail}`));
      return;
    }
    const manifest = serving.manifest;
    const evaluation = manifest.evaluation ?? {};
    const k = evaluation.iwae_k ? ` (k = ${evaluation.iwae_k})` : "";
    describe({
      "model-version": String(serving.version),
      "model-source": serving.source === "embedded" ? "embedded default model" : "model repository",
      "model-latent": String(manifest.latent_dim),
      "model-preset": manifest.training?.preset ?? "not recorded",
      "model-elbo": nats(evaluation.neg_elbo),
      "model-iwae": nats(evaluation.iwae_nll) + (typeof evaluation.iwae_nll === "number" ? k : ""),
      "model-prior": manifest.density
        ? `a fitted density (${manifest.density.components ?? "?"} Gaussians)`
        : "the standard prior N(0, I)",
    });
    $("model-status").textContent = evaluation.split
      ? `Figures per image on ${evaluation.images} ${evaluation.split} images; lower is better. ${sentence(models.detail)}`
      : sentence(models.detail);
    $("model-error").hidden = true;
  } catch (err) {
    fail("model", err);
  }
}

$("model-refresh").addEventListener("click", loadModel);

clearPad();
for (const end of ["A", "B"]) showImage($(`end-${end.toLowerCase()}`), blank(), `Drawing ${end}: not set yet`);
loadModel();
