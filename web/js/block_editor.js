// The block editor: a dialog with a preset menu, one slider per block grouped the way the model
// is built (IN/M/OUT for UNet models, double/single blocks, refiners, ... for DiTs), and the
// canonical spec text, kept in sync both ways. After a run it shows the connected model's own
// family and ids (the nodes send them as `workbench_blocks`); before one, a picker offers every
// family the host loads. Parsing and formatting go to the pack's own routes on the ComfyUI
// server, so the dialog shows exactly what the nodes will apply; any notation the nodes accept
// (A1111 vectors, presets, Inspire %) can be typed or pasted into the text field.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { el, injectStyle } from "./style.js";

// node id -> {family, label, groups, presets} of the model connected at its last run.
const modelBlocks = new Map();
api.addEventListener("executed", ({ detail }) => {
  const info = detail?.output?.workbench_blocks?.[0];
  if (info && Array.isArray(info.groups)) modelBlocks.set(String(detail.node).split(":").pop(), info);
});

function linkTarget(graph, linkId) {
  const link = graph?.links?.get?.(linkId) ?? graph?.links?.[linkId];
  return link ? graph.getNodeById?.(link.target_id) : null;
}

/** The connected model's blocks for `node`: its own last run, or (for a LoRA Stack, which
 * has no model input) that of a node its stack goes to. */
export function modelInfoFor(node, depth = 0) {
  if (!node || depth > 4) return null;
  const own = modelBlocks.get(String(node.id));
  if (own) return own;
  for (const output of node.outputs ?? []) {
    for (const linkId of output.links ?? []) {
      const found = modelInfoFor(linkTarget(node.graph ?? app.graph, linkId), depth + 1);
      if (found) return found;
    }
  }
  return null;
}

let layouts = null;
async function getLayouts() {
  if (!layouts) {
    const r = await api.fetchApi("/lora_workbench/blocks");
    if (!r.ok) throw new Error(`the block layouts are not available (${r.status})`);
    layouts = await r.json();
  }
  return layouts;
}

async function post(path, body) {
  const r = await api.fetchApi(path, { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body) });
  const data = await r.json();
  if (!r.ok) throw new Error(data.error ?? `HTTP ${r.status}`);
  return data;
}

export function guessFamily(spec) {
  const t = (spec ?? "").toUpperCase();
  // A family picked earlier beyond the three classic ones stays picked (HiDream, Wan, ...).
  const stored = localStorage.getItem("LoraWorkbench.blockFamily");
  if (stored && !["sd1", "sdxl", "flux"].includes(stored)) return stored;
  if (/(^|[^A-Z])[DS]\d|FLUX/.test(t)) return "flux";
  if (/SDXL|CLIP_G/.test(t) || t.split(",").length === 12 || t.split(",").length === 20) return "sdxl";
  return localStorage.getItem("LoraWorkbench.blockFamily") || "sd1";
}

/**
 * Opens the editor for `spec` (a string). `onApply(text)` receives the canonical spec when the
 * user presses Apply; `node` (optional) is the node it edits, whose connected model's ids are
 * shown once it has run. Returns the dialog element (tests drive it through its DOM).
 */
export async function openBlockEditor({ spec = "", title = "Block weights", onApply, node = null }) {
  injectStyle();
  const data = await getLayouts();
  const info = modelInfoFor(node);
  const families = { ...(info ? { model: { ...info, label: `Connected model: ${info.label}` } } : {}),
    ...data.families };
  let family = info ? "model" : guessFamily(spec);
  if (!(family in families)) family = "sd1";
  // The list names every family; a family's ids come from the server when it is first shown.
  async function ensureFamily(f) {
    if (families[f].groups) return;
    const r = await api.fetchApi(`/lora_workbench/blocks/${encodeURIComponent(f)}`);
    if (!r.ok) throw new Error(`the blocks of ${families[f].label} are not available (${r.status})`);
    Object.assign(data.families[f], await r.json());
  }
  await ensureFamily(family);
  const idsOf = (f) => families[f].groups.flatMap(([, ids]) => ids);
  const target = () => (family === "model" ? { ids: idsOf("model") } : { family });
  const sliders = new Map();
  const textInput = el("input", { type: "text", className: "wb-spec-text", value: spec,
    placeholder: "e.g. default=1, IN04-IN08=0, OUT*=0.8   or an A1111 vector / preset" });
  const status = el("div", { className: "wb-error wb-spec-status" });
  const canonical = el("div", { className: "wb-spec-canonical" });
  const modelLine = el("div", { className: "wb-model-family", textContent: info
    ? `Model: ${info.label} (from the last run)`
    : "No run yet: pick the model family; after a run the connected model's own blocks are shown." });
  const familySelect = el("select", { className: "wb-family" },
    ...Object.entries(families).map(([id, f]) => el("option", { value: id, textContent: f.label })));
  familySelect.value = family;
  const presetSelect = el("select", { className: "wb-preset" });
  function fillPresets() {
    const own = families[family].presets ?? [];
    presetSelect.replaceChildren(el("option", { value: "", textContent: "Preset…" }),
      ...(own.length ? [el("optgroup", { label: families[family].label },
        ...own.map(([name, text]) => el("option", { value: text, textContent: name })))] : []),
      el("optgroup", { label: "A1111 / Inspire" },
        ...data.presets.map((name) => el("option", { value: name, textContent: name }))));
  }
  fillPresets();
  const gridHost = el("div", { className: "wb-groups" });

  function setRatios(ratios) {
    for (const [id, input] of sliders) {
      const v = ratios[id] ?? 1;
      input.range.value = String(v);
      input.number.value = String(v);
    }
  }

  async function parseText() {
    try {
      const r = await post("/lora_workbench/spec", { text: textInput.value, ...target() });
      status.textContent = "";
      canonical.textContent = `applies: ${r.canonical}`;
      setRatios(r.ratios);
      return r;
    } catch (e) {
      status.textContent = e.message;
      return null;
    }
  }

  async function fromSliders() {
    const ratios = {};
    for (const [id, input] of sliders) ratios[id] = Number(input.number.value);
    try {
      const r = await post("/lora_workbench/spec/format", { ratios, ...target() });
      textInput.value = r.canonical;
      canonical.textContent = `applies: ${r.canonical}`;
      status.textContent = "";
    } catch (e) {
      status.textContent = e.message;
    }
  }

  function buildGrid() {
    sliders.clear();
    gridHost.replaceChildren(...families[family].groups.map(([label, ids]) => {
      const grid = el("div", { className: "wb-grid" }, ...ids.map((id) => {
        const range = el("input", { type: "range", min: "-1", max: "2", step: "0.05", value: "1",
          title: id, dataset: { block: id } });
        const number = el("input", { type: "number", step: "0.05", value: "1", dataset: { block: id } });
        range.addEventListener("input", () => { number.value = range.value; });
        range.addEventListener("change", fromSliders);
        number.addEventListener("change", () => { range.value = number.value; fromSliders(); });
        sliders.set(id, { range, number });
        return el("label", { className: "wb-slider" }, el("span", { textContent: id }), range, number);
      }));
      return el("div", { className: "wb-group", dataset: { group: label } },
        el("div", { className: "wb-group-title", textContent: `${label} (${ids.length})` }), grid);
    }));
  }

  let timer = null;
  textInput.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(parseText, 250); });
  familySelect.addEventListener("change", async () => {
    family = familySelect.value;
    if (family !== "model") localStorage.setItem("LoraWorkbench.blockFamily", family);
    try {
      await ensureFamily(family);
    } catch (e) {
      status.textContent = e.message;
      return;
    }
    buildGrid();
    fillPresets();
    await parseText();
  });
  presetSelect.addEventListener("change", async () => {
    if (!presetSelect.value) return;
    textInput.value = presetSelect.value;
    presetSelect.value = "";
    await parseText();
  });

  const overlay = el("div", { className: "wb-overlay" });
  const close = () => overlay.remove();
  const apply = el("button", { className: "wb-apply", textContent: "Apply" });
  apply.addEventListener("click", async () => {
    // Keep exactly what the user typed when it parses (a preset name stays a preset name);
    // an empty field means 1 everywhere.
    if (textInput.value.trim() && !(await parseText())) return;
    onApply?.(textInput.value.trim());
    close();
  });
  const cancel = el("button", { className: "wb-cancel", textContent: "Cancel" });
  cancel.addEventListener("click", close);
  overlay.addEventListener("keydown", (e) => { e.stopPropagation(); if (e.key === "Escape") close(); });
  const dialog = el("div", { className: "wb-dialog", role: "dialog" },
    el("h3", { textContent: title }),
    modelLine,
    el("div", { className: "wb-toolbar" }, el("span", { textContent: "Model family" }), familySelect, presetSelect),
    gridHost,
    el("label", {}, el("div", { textContent: "Spec (any notation; paste an A1111 vector here)" }), textInput),
    canonical, status,
    el("div", { className: "wb-actions" }, cancel, apply));
  overlay.append(dialog);
  document.body.append(overlay);
  buildGrid();
  await parseText();
  textInput.focus();
  return dialog;
}
