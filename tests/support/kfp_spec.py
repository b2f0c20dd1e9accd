"""Reading a compiled KFP pipeline spec: its component tasks, traced through the branches."""

from __future__ import annotations

from typing import Any


def component_tasks(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every task that runs a component, the condition branches' included, each with `sources`:
    its inputs traced through the branches to a producer `(task, output)` or a pipeline
    parameter `("pipeline", name)`; and `condition`: the branch's, or "" outside one."""
    found: dict[str, dict[str, Any]] = {}

    def walk(dag: dict[str, Any], outer: dict[str, tuple[str, str]], condition: str) -> None:
        for name, task in dag["tasks"].items():
            sources = {}
            for kind in ("artifacts", "parameters"):
                for port, source in task.get("inputs", {}).get(kind, {}).items():
                    if "taskOutputArtifact" in source:
                        output = source["taskOutputArtifact"]
                        sources[port] = (output["producerTask"], output["outputArtifactKey"])
                    elif "componentInputArtifact" in source:
                        sources[port] = outer[source["componentInputArtifact"]]
                    elif "componentInputParameter" in source:
                        given = source["componentInputParameter"]
                        sources[port] = outer.get(given, ("pipeline", given))
            branch = task.get("triggerPolicy", {}).get("condition", "") or condition
            component = spec["components"][task["componentRef"]["name"]]
            if "dag" in component:
                walk(component["dag"], sources, branch)
            else:
                found[name] = {**task, "sources": sources, "condition": branch}

    walk(spec["root"]["dag"], {}, "")
    return found


def function_of(spec: dict[str, Any], task: dict[str, Any]) -> str:
    """The Python function (= component) a compiled task runs."""
    component = spec["components"][task["componentRef"]["name"]]
    args = spec["deploymentSpec"]["executors"][component["executorLabel"]]["container"]["args"]
    return args[args.index("--function_to_execute") + 1]
