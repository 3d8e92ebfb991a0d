// The stack editor on "LoRA Stack (Workbench)": rows with on/off, a LoRA picker (the loras
// folder, filterable, or free text for a URL, AIR or hash), model and CLIP strengths, a block
// spec with its editor, and add/remove/reorder. It edits only the node's `loras` JSON widget,
// which stays the single source of truth: the saved workflow and the API prompt carry exactly
// that text, and a hand-edited JSON loads unchanged (rows keep keys the editor does not know).
// The same picker is attached to every `source` input of the pack's nodes.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { openBlockEditor } from "./block_editor.js";
import { inputLinked, setWidgetHidden } from "./graph.js";
import { el, injectStyle, widgetByName } from "./style.js";

const SOURCE_NODES = {
  WorkbenchLoadLora: "loras", WorkbenchLoraBlockInfo: "loras", WorkbenchFetchModel: null,
  WorkbenchLoadCheckpoint: "checkpoints",
};
const DEFAULTS = { on: true, lora: "", strength_model: 1.0, strength_clip: 1.0, blocks: "" };

const lists = {};
async function fileList(folder) {
  if (!lists[folder]) {
    lists[folder] = api.fetchApi(`/models/${folder}`).then((r) => (r.ok ? r.json() : [])).catch(() => []);
  }
  return lists[folder];
}

// One <datalist> per folder: the native filterable picker that also takes free text.
async function datalistFor(folder) {
  const id = `wb-files-${folder}`;
  let list = document.getElementById(id);
  if (!list) {
    list = el("datalist", { id });
    document.body.append(list);
    for (const name of await fileList(folder)) list.append(el("option", { value: name }));
  }
  return id;
}

function parseRows(text) {
  try {
    const rows = JSON.parse(text?.trim() ? text : "[]");
    return Array.isArray(rows) ? rows : null;
  } catch {
    return null;
  }
}

function num(v, fallback) {
  return typeof v === "number" && Number.isFinite(v) ? v : fallback;
}

function attachStackEditor(node) {
  const loras = widgetByName(node, "loras");
  if (!loras || widgetByName(node, "workbench_stack_editor")) return;
  injectStyle();
  const panel = el("div", { className: "wb-panel wb-stack" });
  let written = null; // the text this editor last wrote, to tell our writes from outside edits

  function write(rows) {
    written = JSON.stringify(rows);
    loras.value = written;
    loras.callback?.(written);
    node.graph?.change?.();
    render();
  }

  function render() {
    const rows = parseRows(loras.value);
    if (rows === null) {
      const raw = el("button", { textContent: "Edit the JSON" });
      raw.addEventListener("click", () => toggleRaw(true));
      panel.replaceChildren(el("div", { className: "wb-error",
        textContent: "The loras text is not a JSON list of rows; fix it in the JSON view." }), raw);
      return;
    }
    const items = rows.map((row, i) => rowElement(rows, row, i));
    const add = el("button", { className: "wb-add", textContent: "+ Add LoRA" });
    add.addEventListener("click", () => write([...rows, { ...DEFAULTS }]));
    const json = el("button", { className: "wb-json", textContent: loras.hidden ? "JSON" : "Rows only" });
    json.addEventListener("click", () => toggleRaw(loras.hidden));
    panel.replaceChildren(...items, el("div", { className: "wb-buttons" }, add, json));
  }

  function rowElement(rows, row, i) {
    const on = el("input", { type: "checkbox", className: "wb-on", checked: row.on !== false, title: "on/off" });
    const lora = el("input", { type: "text", className: "wb-lora", value: row.lora ?? "",
      placeholder: "LoRA file, URL, AIR or sha256:…", title: "LoRA: a file in the loras folder, or a remote source" });
    datalistFor("loras").then((id) => lora.setAttribute("list", id));
    const sm = el("input", { type: "number", className: "wb-strength-model", step: "0.05",
      value: String(num(row.strength_model, 1)), title: "strength_model" });
    const sc = el("input", { type: "number", className: "wb-strength-clip", step: "0.05",
      value: String(num(row.strength_clip, 1)), title: "strength_clip" });
    const blocks = el("input", { type: "text", className: "wb-blocks", value: row.blocks ?? "",
      placeholder: "blocks", title: "Block spec (empty: 1 everywhere)" });
    const edit = el("button", { className: "wb-edit-blocks", textContent: "▦", title: "Block editor" });
    const up = el("button", { className: "wb-up", textContent: "↑", title: "Move up", disabled: i === 0 });
    const down = el("button", { className: "wb-down", textContent: "↓", title: "Move down",
      disabled: i === rows.length - 1 });
    const remove = el("button", { className: "wb-remove", textContent: "✕", title: "Remove" });
    const set = (key, value) => { rows[i] = { ...row, [key]: value }; write(rows); };
    on.addEventListener("change", () => set("on", on.checked));
    lora.addEventListener("change", () => set("lora", lora.value.trim()));
    sm.addEventListener("change", () => set("strength_model", num(Number(sm.value), 1)));
    sc.addEventListener("change", () => set("strength_clip", num(Number(sc.value), 1)));
    blocks.addEventListener("change", () => set("blocks", blocks.value.trim()));
    edit.addEventListener("click", () => openBlockEditor({ spec: row.blocks ?? "", node,
      title: `Block weights: ${row.lora || "row " + (i + 1)}`, onApply: (text) => set("blocks", text) }));
    const move = (j) => { const next = [...rows]; [next[i], next[j]] = [next[j], next[i]]; write(next); };
    up.addEventListener("click", () => move(i - 1));
    down.addEventListener("click", () => move(i + 1));
    remove.addEventListener("click", () => write(rows.filter((_r, j) => j !== i)));
    for (const input of [lora, sm, sc, blocks]) input.addEventListener("keydown", (e) => e.stopPropagation());
    return el("div", { className: `wb-row${row.on === false ? " wb-off" : ""}`, dataset: { index: String(i) } },
      on, lora, el("div", { className: "wb-buttons" }, up, down, remove),
      el("div", { className: "wb-params" }, el("span", { textContent: "model" }), sm, el("span", { textContent: "clip" }),
        sc, el("span", { textContent: "blocks" }), blocks, edit));
  }

  function toggleRaw(show) {
    setHidden(!show);
    render();
    node.setSize?.([node.size[0], node.computeSize()[1]]);
    node.graph?.setDirtyCanvas?.(true, true);
  }

  // Edits in the JSON view reach the rows (the textarea calls the widget's callback on input).
  const original = loras.callback;
  loras.callback = function (value, ...rest) {
    const result = original?.call(this, value, ...rest);
    if (value !== written) render();
    return result;
  };
  const ownSize = Object.prototype.hasOwnProperty.call(loras, "computeSize") ? loras.computeSize : undefined;
  function setHidden(hidden) {
    setWidgetHidden(loras, hidden);
    // A hidden DOM widget still reserves its height in the classic layout: give it none.
    if (hidden) loras.computeSize = () => [0, -4];
    else if (ownSize) loras.computeSize = ownSize;
    else delete loras.computeSize;
  }
  setHidden(true);
  const widget = node.addDOMWidget("workbench_stack_editor", "workbench-stack", panel, {
    serialize: false, hideOnZoom: false,
    getMinHeight: () => 40 + 58 * Math.max(1, (parseRows(loras.value) ?? []).length),
  });
  widget.serialize = false; // not in widgets_values either: the JSON widget holds the data
  node.workbenchRender = render;
  render();
  node.setSize?.([Math.max(node.size[0], 520), node.computeSize()[1]]);
}

// The file picker on a `source` text widget: a text field with the folder's files as filterable
// suggestions (a native <datalist>), which also takes free text (URL, AIR, hash). The original
// widget stays the one that is saved and sent; the picker only edits its value.
function attachSourcePicker(node, folder) {
  const source = widgetByName(node, "source");
  if (!source || widgetByName(node, "workbench_source_picker")) return;
  injectStyle();
  const input = el("input", { type: "text", className: "wb-source", value: source.value ?? "",
    placeholder: folder ? `file in ${folder}, URL, AIR or sha256:…` : "URL, AIR, hf://… or sha256:…",
    title: "source: a file name in the folder, or a URL, AIR, hf:// reference or content hash" });
  // Fetch Model saves into the folder its `directory` widget names: offer that folder's files.
  const directory = widgetByName(node, "directory");
  const offer = (name) => (name ? datalistFor(name).then((id) => input.setAttribute("list", id))
    : input.removeAttribute("list"));
  offer(folder ?? directory?.value);
  if (!folder && directory) {
    const original = directory.callback;
    directory.callback = function (value, ...rest) {
      offer(value);
      return original?.call(this, value, ...rest);
    };
  }
  input.addEventListener("keydown", (e) => e.stopPropagation());
  input.addEventListener("change", () => {
    source.value = input.value.trim();
    source.callback?.(source.value);
    node.graph?.change?.();
  });
  const sync = () => {
    const linked = inputLinked(node, "source");
    input.disabled = !!linked;
    if (document.activeElement !== input) input.value = linked ? "(connected)" : source.value ?? "";
  };
  const panel = el("div", { className: "wb-panel" }, input);
  const widget = node.addDOMWidget("workbench_source_picker", "workbench-source", panel,
    { serialize: false, getMinHeight: () => 30, getMaxHeight: () => 30 });
  widget.serialize = false;
  widget.computeSize = (width) => [width ?? node.size[0], 36]; // a fixed-height line, not a share of the rest
  setWidgetHidden(source, true);
  source.computeSize = () => [0, -4]; // hidden, so it takes no room in the classic layout either
  node.workbenchSyncSource = () => {
    sync();
    fitHeight(node);
  };
  node.workbenchSyncSource();
}

// Grow the node (never shrink it) to the height its widgets need: a saved or default size may
// predate the picker or the editor.
function fitHeight(node) {
  const need = node.computeSize?.()[1];
  if (need && node.size[1] < need + 12) node.setSize?.([node.size[0], need + 12]);
}

// A native button next to the `blocks` widget of Load LoRA opens the block editor on it. Its
// name is its caption: the Nodes 2.0 button of frontend 1.32.9 shows the name and ignores the
// label. It is not saved (serialize: false), so the name appears in no workflow.
const BLOCKS_BUTTON = "Edit blocks…";
function attachBlocksButton(node) {
  const blocks = widgetByName(node, "blocks");
  if (!blocks || widgetByName(node, BLOCKS_BUTTON)) return;
  const button = node.addWidget("button", BLOCKS_BUTTON, null, () => openBlockEditor({
    spec: blocks.value ?? "", title: "Block weights", node,
    onApply: (text) => { blocks.value = text; blocks.callback?.(text); node.graph?.change?.(); },
  }), { serialize: false });
  button.label = BLOCKS_BUTTON;
  button.serialize = false;
}

app.registerExtension({
  name: "LoraWorkbench.Editors",
  nodeCreated(node) {
    const type = node.comfyClass ?? node.type;
    if (type === "WorkbenchLoraStack") attachStackEditor(node);
    if (type === "WorkbenchLoadLora") attachBlocksButton(node);
    if (type in SOURCE_NODES) attachSourcePicker(node, SOURCE_NODES[type]);
  },
  loadedGraphNode(node) {
    // Widget values are restored after nodeCreated: show the loaded rows and sources.
    node.workbenchRender?.();
    node.workbenchSyncSource?.();
    if (node.workbenchRender) fitHeight(node);
  },
});
