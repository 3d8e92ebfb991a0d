// Results on the node after it runs: each LoRA's (or the extraction's) one-line summary, with a
// warning badge when something in the file was not applied, from the node's `workbench_report`
// UI output. Plots come as ordinary preview images, which the frontend shows by itself.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { nodeForExecutionId } from "./graph.js";
import { el, injectStyle, widgetByName } from "./style.js";


function entryElement(entry) {
  const warn = typeof entry?.warning === "string" && entry.warning;
  return el("div", { className: `wb-result${warn ? " wb-warn" : ""}` },
    warn ? el("span", { className: "wb-badge", textContent: "⚠ not all applied", title: entry.warning }) : null,
    el("b", { textContent: String(entry?.name ?? "") }), el("br"),
    el("span", { textContent: String(entry?.summary ?? "") }),
    warn ? el("div", { className: "wb-warning-text", textContent: entry.warning }) : null);
}

function familyLine(info) {
  const stacks = info.groups.filter(([label]) => !/layers|Text encoders/.test(label))
    .map(([label, ids]) => `${ids.length} ${label.toLowerCase()}`).join(" + ");
  return el("div", { className: "wb-model-family", textContent: `Model: ${info.label}${stacks ? ` · ${stacks}` : ""}` });
}

export function showResults(node, entries, fullText, blocksInfo = null) {
  injectStyle();
  let widget = widgetByName(node, "workbench_results");
  if (!widget) {
    const panel = el("div", { className: "wb-panel wb-results" });
    widget = node.addDOMWidget("workbench_results", "workbench-results", panel, {
      serialize: false,
      getMinHeight: () => 34 + (widget?.familyShown ? 20 : 0)
        + (widget?.entries ?? [{}]).reduce((h, e) => h + (e?.warning ? 66 : 46), 0)
        + (widget?.element?.querySelector("details")?.open ? 270 : 0) });
    widget.serialize = false;
  }
  widget.entries = entries;
  widget.familyShown = !!blocksInfo?.groups;
  // The full report, folded: core's Preview as Text renders Markdown and joins its lines.
  const details = typeof fullText === "string" && fullText
    ? el("details", { className: "wb-details" }, el("summary", { textContent: "Full report" }),
      el("pre", { textContent: fullText }))
    : null;
  widget.element.replaceChildren(...(blocksInfo?.groups ? [familyLine(blocksInfo)] : []),
    ...entries.map(entryElement), ...(details ? [details] : []));
  // Opening the full report makes room for it; closing it leaves the node as the user sized it.
  details?.addEventListener("toggle", () => {
    if (details.open) node.setSize?.([node.size[0], Math.max(node.size[1], node.computeSize()[1] + 36)]);
    node.graph?.setDirtyCanvas?.(true, true);
  });
  // The classic layout shares the height among DOM widgets by their minimums; a little slack
  // keeps the picker above from being squeezed.
  node.setSize?.([node.size[0], Math.max(node.size[1], node.computeSize()[1] + 36)]);
  node.graph?.setDirtyCanvas?.(true, true);
}

api.addEventListener("executed", ({ detail }) => {
  const entries = detail?.output?.workbench_report;
  if (!Array.isArray(entries) || !entries.length) return;
  const node = nodeForExecutionId(detail.node);
  if (node) showResults(node, entries, detail.output.workbench_text?.[0], detail.output.workbench_blocks?.[0]);
});

app.registerExtension({ name: "LoraWorkbench.Results" });
