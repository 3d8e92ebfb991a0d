// Records where fetched models come from in the workflow itself.
//
// The pack's fetching nodes send `workbench_models` in their UI output: entries in the frontend's
// own missing-models format ({name, url, hash, hash_type, directory}, no token ever). Copying them
// into the node's `properties.models` means a saved or shared workflow tells anyone who opens it,
// with or without this pack, which file is missing and where to get it.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { nodeForExecutionId } from "./graph.js";

const KEYS = ["name", "url", "hash", "hash_type", "directory"];

function clean(entry) {
  // Only the schema's five keys: the workflow validator rejects (or strips) anything else.
  const out = {};
  for (const k of KEYS) if (typeof entry?.[k] === "string" && entry[k]) out[k] = entry[k];
  return out.name && out.url && out.directory ? out : null;
}


export function mergeModels(existing, entries) {
  const kept = (Array.isArray(existing) ? existing : []).filter(
    (m) => !entries.some((e) => e.name === m?.name && e.directory === m?.directory));
  return [...kept, ...entries];
}

api.addEventListener("executed", ({ detail }) => {
  const entries = (detail?.output?.workbench_models ?? []).map(clean).filter(Boolean);
  if (!entries.length) return;
  const node = nodeForExecutionId(detail.node);
  if (!node) return;
  node.properties = node.properties ?? {};
  node.properties.models = mergeModels(node.properties.models, entries);
  node.graph?.change?.();
});

app.registerExtension({ name: "LoraWorkbench.Provenance" });
