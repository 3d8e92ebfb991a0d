// The few graph look-ups the pack needs, written once for every frontend from the floor (1.32.9)
// up: newer frontends deprecate `app.graph` for `app.rootGraph` and `input.link` for
// `node.isInputConnected()` / `getInputLink()` (ComfyUI_frontend 1.58.1 marks both deprecated);
// the older spellings stay as the fallback for frontends that lack the new ones.
import { app } from "../../../scripts/app.js";

export function rootGraph() {
  return app.rootGraph ?? app.graph;
}

// The node an execution id names. The host numbers a node inside a subgraph by the path of
// subgraph nodes that leads to it ("12:5", "12:7:3"); a plain id is a node of the root graph.
// Walking that path from the root graph finds the node whichever graph the canvas shows.
export function nodeForExecutionId(id) {
  const path = String(id).split(":");
  let graph = rootGraph();
  for (const part of path.slice(0, -1)) {
    graph = graph?.getNodeById?.(Number(part) || part)?.subgraph;
  }
  const last = path[path.length - 1];
  return graph?.getNodeById?.(Number(last) || last) ?? null;
}

// Whether the input called `name` has a link.
export function inputLinked(node, name) {
  const index = node.inputs?.findIndex((i) => i.name === name) ?? -1;
  if (index < 0) return false;
  if (typeof node.isInputConnected === "function") return node.isInputConnected(index);
  return node.inputs[index].link != null;
}

// Hide or show a widget in both renderers: the classic canvas reads `widget.hidden`, the Vue
// renderer ("Nodes 2.0") reads the merged `widget.options`, which must be changed in place: a
// replaced options object is not the one the Vue widget state holds.
export function setWidgetHidden(widget, hidden) {
  widget.hidden = hidden;
  if (widget.options) widget.options.hidden = hidden;
  else widget.options = { hidden };
}
