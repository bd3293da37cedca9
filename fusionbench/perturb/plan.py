"""How one run applies a perturbation: its config entry, and what training and test see.

The resolved config of a perturbed run holds ``"perturbation": {"name", "severity", "apply_to",
"options"}`` (options with defaults filled); clean runs have no such key, so their hashes are those of
runs stored before perturbations existed. The run's seed seeds the perturbation.

``apply_to``: ``train`` (training and validation perturbed, test clean), ``test`` (test only) or
``both``. Catalog-level perturbations (``mismatch`` swap, ``missing`` item) change the modality tables
the model is built from; when training and test differ, the test model is rebuilt on the test-phase
tables and loads the trained state dict (table data are non-persistent buffers, never in the state
dict). Sequence-level ones (``disorder``, ``mismatch`` shift, ``missing`` occurrence) map every batch
of the phases they apply to; with one on the training phase, causal strategies train on prefix samples
(one target per row) instead of one causal pass per sequence, because a perturbed prefix belongs to one
target: a shuffled causal row would show earlier positions later items, and per-target masks or shifts
cannot share one pass. The set of (prefix, target) pairs is the clean one; this holds at every
severity, p = 0 included, so a stress curve is trained one way throughout; at p = 0 every
sequence-level perturbation trains alike, so their p = 0 cells share one training
(:func:`training_view_of`, ``runner.training_config``). Cost: SASRec on Beauty, one
CPU thread, about 1.3x the epoch time (1027 steps of ~57 ms instead of 202 causal steps of ~221 ms).

``ratio-paper`` selects on per-epoch test scores, so it only allows ``apply_to = both``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from fusionbench.context import StrategyContext
from fusionbench.errors import UserInputError
from fusionbench.evaluate import BatchView
from fusionbench.perturb.base import Perturbation, PerturbContext, check_severity
from fusionbench.registry import PERTURBATIONS
from fusionbench.strategy import Strategy
from fusionbench.train import DataViews

APPLY_TO = ("train", "test", "both")


@dataclass(frozen=True)
class PerturbationRequest:
    """A perturbation as asked for: ``options`` values may be strings (``--set-p key=value``)."""

    name: str
    severity: float
    apply_to: str = "test"
    options: Mapping[str, Any] = field(default_factory=dict)


def resolve_perturbation(request: PerturbationRequest, protocol: str) -> dict:
    """The config entry ``{"name", "severity", "apply_to", "options"}``, every field validated."""
    PERTURBATIONS.get(request.name)
    severity = check_severity(request.severity, f"perturbation {request.name!r}: severity")
    if request.apply_to not in APPLY_TO:
        raise UserInputError(f"perturbation apply_to must be one of {', '.join(APPLY_TO)}, got {request.apply_to!r}")
    if protocol == "ratio-paper" and request.apply_to != "both":
        raise UserInputError("protocol 'ratio-paper' selects on test scores every epoch, so training and test "
                             f"cannot see different data: use apply_to=both, not {request.apply_to!r}")
    options = PERTURBATIONS.options(request.name, **request.options).as_dict()
    return {"name": request.name, "severity": severity, "apply_to": request.apply_to, "options": options}


def training_view_of(spec: Mapping[str, Any], causal_training: bool) -> dict | None:
    """What a resolved perturbation entry changes about training a strategy (``causal_training``: its
    class attribute): ``None`` when training sees the clean data exactly as the clean run (apply_to =
    test; p = 0 at catalog level: the same tables; p = 0 at sequence level for a strategy that trains on
    prefix samples anyway), the entry itself when training sees perturbed data (p > 0), and
    ``{"severity": 0.0, "training": "prefix samples"}`` for p = 0 at sequence level of a causal strategy
    (identity batches, but prefix samples instead of causal rows, the same for every such perturbation
    and option)."""
    if spec["apply_to"] == "test":
        return None
    if spec["severity"] > 0.0:
        return dict(spec)
    options = PERTURBATIONS.options(spec["name"], **spec["options"])
    if PERTURBATIONS.get(spec["name"]).level_for(options) == "catalog" or not causal_training:
        return None
    return {"severity": 0.0, "training": "prefix samples"}


@dataclass(frozen=True)
class StressPlan:
    """A run's perturbation and the phases (train = training and validation, test) it applies to."""

    perturbation: Perturbation
    apply_to: str

    @classmethod
    def from_config(cls, config: dict, ctx: StrategyContext, available: Sequence[str]) -> "StressPlan":
        """Build from a resolved config; ``ctx`` is the clean strategy context, ``available`` the
        dataset's channel names (what option ``modalities`` may name)."""
        spec = config["perturbation"]
        pctx = PerturbContext(spec["severity"], config["seed"], tuple(ctx.modalities), tuple(available))
        return cls(PERTURBATIONS.create(spec["name"], pctx, **spec["options"]), spec["apply_to"])

    def applies(self, phase: str) -> bool:
        return self.apply_to in (phase, "both")

    def view(self, phase: str) -> BatchView | None:
        if self.perturbation.level == "sequence" and self.applies(phase):
            return self.perturbation.batch
        return None

    def build(self, ctx: StrategyContext, make: Callable[[StrategyContext], Strategy]) -> tuple[Strategy, DataViews]:
        """The model to train (``make`` on the training-phase context) and the views of both phases."""
        perturbed = ctx
        if self.perturbation.level == "catalog" and ctx.modalities:
            perturbed = ctx.with_modalities(self.perturbation.tables(ctx.modalities))
        train_ctx = perturbed if self.applies("train") else ctx
        test_ctx = perturbed if self.applies("test") else ctx
        test_model = None if test_ctx is train_ctx else _rebuild_on(test_ctx, make)
        return make(train_ctx), DataViews(self.view("train"), self.view("test"), test_model)


def _rebuild_on(ctx: StrategyContext, make: Callable[[StrategyContext], Strategy]) -> Callable[[Strategy], Strategy]:
    """``trained -> the same weights in a model built on ctx`` (its tables, non-persistent, are ctx's)."""
    def rebuild(trained: Strategy) -> Strategy:
        model = make(ctx)
        model.load_state_dict(trained.state_dict())
        return model
    return rebuild
