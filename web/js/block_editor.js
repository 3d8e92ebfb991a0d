// The block editor: a dialog with a preset menu, one slider per block grouped the way the model
// family is built (IN/M/OUT for UNet models, double/single blocks for Flux), and the canonical
// spec text, kept in sync both ways. Parsing and formatting go to the pack's own routes on the
// ComfyUI server, so the dialog shows exactly what the nodes will apply; any notation the nodes
// accept (A1111 vectors, presets, Inspire %) can be typed or pasted into the text field.
import { api } from "../../../scripts/api.js";
import { el, injectStyle } from "./style.js";

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
  if (/(^|[^A-Z])[DS]\d|FLUX/.test(t)) return "flux";
  if (/SDXL|CLIP_G/.test(t) || t.split(",").length === 12 || t.split(",").length === 20) return "sdxl";
  return localStorage.getItem("LoraWorkbench.blockFamily") || "sd1";
}

/**
 * Opens the editor for `spec` (a string). `onApply(text)` receives the canonical spec when the
 * user presses Apply. Returns the dialog element (tests drive it through its DOM).
 */
export async function openBlockEditor({ spec = "", title = "Block weights", onApply }) {
  injectStyle();
  const data = await getLayouts();
  let family = guessFamily(spec);
  const sliders = new Map();
  const textInput = el("input", { type: "text", className: "wb-spec-text", value: spec,
    placeholder: "e.g. default=1, IN04-IN08=0, OUT*=0.8   or an A1111 vector / preset" });
  const status = el("div", { className: "wb-error wb-spec-status" });
  const canonical = el("div", { className: "wb-spec-canonical" });
  const familySelect = el("select", { className: "wb-family" },
    ...Object.entries(data.families).map(([id, f]) => el("option", { value: id, textContent: f.label })));
  familySelect.value = family;
  const presetSelect = el("select", { className: "wb-preset" },
    el("option", { value: "", textContent: "Preset…" }),
    ...data.presets.map((name) => el("option", { value: name, textContent: name })));
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
      const r = await post("/lora_workbench/spec", { text: textInput.value, family });
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
      const r = await post("/lora_workbench/spec/format", { ratios, family });
      textInput.value = r.canonical;
      canonical.textContent = `applies: ${r.canonical}`;
      status.textContent = "";
    } catch (e) {
      status.textContent = e.message;
    }
  }

  function buildGrid() {
    sliders.clear();
    gridHost.replaceChildren(...data.families[family].groups.map(([label, ids]) => {
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
      return el("div", { className: "wb-group" }, el("div", { className: "wb-group-title", textContent: label }), grid);
    }));
  }

  let timer = null;
  textInput.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(parseText, 250); });
  familySelect.addEventListener("change", async () => {
    family = familySelect.value;
    localStorage.setItem("LoraWorkbench.blockFamily", family);
    buildGrid();
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
