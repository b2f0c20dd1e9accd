"""The training pipeline's graph, declared once: its domains, the models it trains (which
stage, on which domain, from which model), which model is evaluated on which test sets, and
which model is served.

Both front ends follow `GRAPH`. The KFP pipeline (`pipelines/training.py`) builds its
evaluations, export and promotion from it. dvc.yaml cannot import Python, so
`tests/test_pipeline_graph.py` checks dvc.yaml, and the compiled `pipelines/training.yaml`,
against it: change the graph here, then both front ends, and that test says what disagrees.

No stage imports this module: it wires stages together and runs none (so it is no dvc dep).
It needs neither dvc nor kfp.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from reid_core.stages import STAGES

Domain = Literal["source", "target"]
SOURCE: Domain = "source"
TARGET: Domain = "target"


@dataclass(frozen=True)
class TrainedModel:
    """A model the pipeline trains: `stage` writes it from the dataset and manifest of
    `domain`, starting from the model `base`, which it takes as its input port `base_port`
    (no base: trained from scratch)."""

    name: str
    stage: str
    domain: Domain
    base: str | None = None
    base_port: str | None = None


@dataclass(frozen=True)
class Evaluation:
    """`model` evaluated on `test_sets`, in order; the first is the primary one (its metrics
    are the evaluation's flat keys). An evaluation is named after its model."""

    model: str
    test_sets: tuple[Domain, ...]


@dataclass(frozen=True)
class PipelineGraph:
    """Domains, models, evaluations and the served model (exported with its training domain's
    data, promoted on its evaluation). Refuses an inconsistent graph as it is built."""

    domains: tuple[Domain, ...]
    models: tuple[TrainedModel, ...]
    evaluations: tuple[Evaluation, ...]
    served: str

    def __post_init__(self) -> None:
        names = [m.name for m in self.models]
        problems = _duplicates("model", names)
        problems += _duplicates("evaluation", [e.model for e in self.evaluations])
        known: set[str] = set()
        for model in self.models:  # a base comes before the models trained from it
            stage = STAGES.get(model.stage)
            ports = {p.name for p in stage.inputs} if stage else set()
            if stage is None:
                problems.append(f"model {model.name}: no stage {model.stage}")
            elif not {"dataset", "manifest"} <= ports:
                problems.append(f"model {model.name}: stage {model.stage} reads no dataset")
            if model.domain not in self.domains:
                problems.append(f"model {model.name}: unknown domain {model.domain}")
            if (model.base is None) != (model.base_port is None):
                problems.append(f"model {model.name}: give both base and base_port, or neither")
            elif model.base is not None and model.base not in known:
                problems.append(f"model {model.name}: base {model.base} is not declared before")
            elif stage is not None and model.base_port is not None and model.base_port not in ports:
                problems.append(f"model {model.name}: stage {model.stage} has no {model.base_port}")
            known.add(model.name)
        for evaluation in self.evaluations:
            if evaluation.model not in known:
                problems.append(f"evaluation of unknown model {evaluation.model}")
            if not evaluation.test_sets:
                problems.append(f"evaluation {evaluation.model}: no test sets")
            problems += _duplicates(
                f"evaluation {evaluation.model}: test set", evaluation.test_sets
            )
            problems += [
                f"evaluation {evaluation.model}: unknown domain {d}"
                for d in evaluation.test_sets
                if d not in self.domains
            ]
        if self.served not in {e.model for e in self.evaluations}:
            problems.append(f"served model {self.served} has no evaluation for promote to judge")
        if problems:
            raise ValueError("inconsistent pipeline graph: " + "; ".join(problems))

    def model(self, name: str) -> TrainedModel:
        return next(m for m in self.models if m.name == name)

    def evaluation(self, model: str) -> Evaluation:
        return next(e for e in self.evaluations if e.model == model)

    def trained_on(self, name: str) -> tuple[Domain, ...]:
        """The domains model `name` is trained on, its bases' included, in the graph's order."""
        used: set[str] = set()
        model: TrainedModel | None = self.model(name)
        while model is not None:
            used.add(model.domain)
            model = self.model(model.base) if model.base else None
        return tuple(d for d in self.domains if d in used)


def _duplicates(what: str, names: tuple[str, ...] | list[str]) -> list[str]:
    return [f"{what} {n} is declared twice" for n in sorted(set(names)) if names.count(n) > 1]


GRAPH = PipelineGraph(
    domains=(SOURCE, TARGET),
    models=(
        TrainedModel("teacher", "train", SOURCE),
        TrainedModel("student", "distill", SOURCE, base="teacher", base_port="teacher"),
        TrainedModel("adapted", "adapt", TARGET, base="teacher", base_port="model"),
    ),
    evaluations=(
        Evaluation("teacher", (SOURCE, TARGET)),  # direct transfer to the target
        Evaluation("student", (SOURCE,)),  # the one promote judges
        Evaluation("adapted", (TARGET, SOURCE)),  # source shows what adaptation forgot
    ),
    served="student",
)
"""The training pipeline's graph: dvc.yaml and the KFP pipeline follow it."""
