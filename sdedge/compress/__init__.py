"""Compression for the device: structured channel pruning (:mod:`.prune`), recovered by distillation from
the unpruned network on the training data or on images synthesised from the teacher alone
(:mod:`.synth`); the run behind ``sdedge prune`` is :func:`prune` (:mod:`.api`). MACs per exit:
:mod:`.macs`. INT8 lives with the export (``sdedge export --int8``)."""
from __future__ import annotations

from .api import PruneConfig, PruneResult, prune
from .macs import ExitCost, exit_costs
from .prune import IMPORTANCES, PruneReport, PruneSettings, prune_network
from .synth import SynthConfig, synthesize

__all__ = ["ExitCost", "IMPORTANCES", "PruneConfig", "PruneReport", "PruneResult", "PruneSettings", "SynthConfig",
           "exit_costs", "prune", "prune_network", "synthesize"]
