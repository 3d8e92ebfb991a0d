"""Turn a saved (UI-format) workflow into the API-format prompt the frontend would queue.

Follows the frontend's rules for the cases our example workflows use: links become
``[node id, output slot]`` inputs; widget values fill the node's widget inputs in schema order
(``/object_info``), skipping the extra ``control_after_generate`` value that seed widgets
store and the value a widget keeps while a link feeds it (its input slot has ``widget``);
muted (mode 2) and bypassed (mode 4) nodes are left out.
"""

from __future__ import annotations

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def is_widget(spec) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) in (2, 4):
            continue
        info = object_info[node["type"]]
        inputs: dict = {}
        linked_widgets = set()
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                link = links[slot["link"]]
                inputs[slot["name"]] = [str(link[1]), link[2]]
                if slot.get("widget"):
                    linked_widgets.add(slot["name"])
        values = list(node.get("widgets_values") or [])
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                if not is_widget(spec) or not values:
                    continue
                if name in inputs:
                    if name in linked_widgets:
                        values.pop(0)  # a widget fed by a link keeps its value in the list
                    continue
                inputs[name] = values.pop(0)
                if len(spec) > 1 and spec[1].get("control_after_generate") and values:
                    values.pop(0)
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt
