// Shared styles of the pack's DOM widgets and dialogs, in ComfyUI's own colour variables so
// they follow the user's theme. Injected once per page.
const CSS = `
.wb-panel { font: 12px sans-serif; color: var(--input-text, #ddd); display: flex; flex-direction: column;
  gap: 4px; padding: 2px 0; box-sizing: border-box; width: 100%; overflow: auto; }
.wb-row { display: grid; grid-template-columns: 18px 1fr auto; grid-template-areas: "on lora buttons"
  ". params params"; gap: 3px 4px; align-items: center; background: var(--comfy-input-bg, #222);
  border: 1px solid var(--border-color, #444); border-radius: 4px; padding: 3px 4px; }
.wb-row > .wb-on { grid-area: on; margin: 0; appearance: auto; width: 14px; height: 14px;
  accent-color: var(--p-primary-color, #4a90e2); }
.wb-row > .wb-lora { grid-area: lora; }
.wb-row > .wb-buttons { grid-area: buttons; }
.wb-params { grid-area: params; display: grid; grid-template-columns: auto 56px auto 56px auto 1fr auto;
  gap: 3px; align-items: center; }
.wb-params > span { opacity: 0.75; font-size: 11px; }
.wb-row.wb-off { opacity: 0.5; }
.wb-panel input[type=text], .wb-panel input[type=number], .wb-dialog input[type=text], .wb-dialog select,
.wb-dialog input[type=number] { background: var(--comfy-input-bg, #222); color: var(--input-text, #ddd);
  border: 1px solid var(--border-color, #444); border-radius: 3px; padding: 2px 4px; min-width: 0;
  font: 12px sans-serif; box-sizing: border-box; width: 100%; }
.wb-panel button, .wb-dialog button { background: var(--comfy-menu-bg, #353535); color: var(--input-text, #ddd);
  border: 1px solid var(--border-color, #444); border-radius: 3px; padding: 1px 5px; cursor: pointer; font: 12px sans-serif; }
.wb-panel button:hover, .wb-dialog button:hover { filter: brightness(1.3); }
.wb-buttons { display: flex; gap: 2px; }
.wb-error { color: #f66; white-space: pre-wrap; }
.wb-result { border-left: 3px solid #4a4; padding: 2px 6px; background: var(--comfy-input-bg, #222);
  border-radius: 3px; white-space: pre-wrap; overflow-wrap: anywhere; }
.wb-details summary { cursor: pointer; opacity: 0.8; }
.wb-details pre { margin: 2px 0 0; padding: 4px 6px; background: var(--comfy-input-bg, #222); border-radius: 3px;
  font: 11px monospace; white-space: pre-wrap; overflow-wrap: anywhere; max-height: 260px; overflow: auto;
  user-select: text; }
.wb-result.wb-warn { border-left-color: #e9a23b; }
.wb-badge { display: inline-block; background: #e9a23b; color: #000; border-radius: 8px; padding: 0 6px;
  margin-right: 4px; font-weight: bold; }
.wb-overlay { position: fixed; inset: 0; background: rgba(0,0,0,0.5); z-index: 10000; display: flex;
  align-items: center; justify-content: center; }
.wb-dialog { background: var(--comfy-menu-bg, #353535); color: var(--input-text, #ddd); border: 1px solid
  var(--border-color, #444); border-radius: 8px; padding: 12px; width: min(860px, 92vw); max-height: 88vh;
  overflow: auto; font: 12px sans-serif; display: flex; flex-direction: column; gap: 8px; }
.wb-dialog h3 { margin: 0; font-size: 14px; }
.wb-toolbar { display: flex; gap: 8px; align-items: center; flex-wrap: wrap; }
.wb-toolbar select { width: auto; }
.wb-group { border: 1px solid var(--border-color, #444); border-radius: 4px; padding: 4px 6px; }
.wb-group-title { font-weight: bold; margin-bottom: 2px; }
.wb-grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(72px, 1fr)); gap: 4px; }
.wb-slider { display: flex; flex-direction: column; align-items: stretch; gap: 1px; }
.wb-slider span { text-align: center; font-size: 11px; }
.wb-slider input[type=range] { width: 100%; margin: 0; }
.wb-actions { display: flex; justify-content: flex-end; gap: 6px; }
`;

export function injectStyle() {
  if (document.getElementById("lora-workbench-style")) return;
  const style = document.createElement("style");
  style.id = "lora-workbench-style";
  style.textContent = CSS;
  document.head.append(style);
}

export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "dataset") Object.assign(node.dataset, v);
    else if (k in node) node[k] = v;
    else node.setAttribute(k, v);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

export function widgetByName(node, name) {
  return node?.widgets?.find((w) => w.name === name) ?? null;
}
