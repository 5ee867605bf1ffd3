"""Dedicated models: the reference a shared model is compared with. One model per subset,
each trained (complete inputs only) and tested on that subset's modalities."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dmrnet.methods.base import drop_settings, register_method
from dmrnet.methods.dmrnet import DMRNetFamily
from dmrnet.metrics import summarize
from dmrnet.records import Stage, StageResult
from dmrnet.subsets import SubsetSpace


@register_method
class Dedicated(DMRNetFamily):
    """A run trains 2^M - 1 models; built alone (e.g. ``dmrnet fit``), it is the dedicated
    model of the configured modalities: ``full_only``'s network and training."""

    name = "dedicated"
    description = "one full_only model per subset (the reference)"
    variance, sample = False, False
    groups, boosters = (), ()
    train_subsets = "full"
    role = "reference"

    def stages(self, settings: Mapping[str, Any], modalities: Sequence[str]) -> list[Stage]:
        # the shared model's subset weights name subsets a dedicated model does not have
        own = {**drop_settings(settings, "subset_weights"), "method": self.name}
        space = SubsetSpace(modalities)
        return [Stage(name, own, modalities=list(space.parse(name)), nested=True)
                for name in space.names]

    def combine(self, results: Sequence[StageResult], higher_is_better: bool) -> dict[str, Any]:
        per_subset = {r.stage.name: r.per_subset[r.stage.name] for r in results}
        return {"per_subset": per_subset, **summarize(per_subset, higher_is_better),
                "eval_seconds": sum(r.eval_seconds for r in results)}

    def combine_samples(self, results: Sequence[StageResult]) -> dict[str, dict[str, Any]]:
        return {r.stage.name: r.test_samples[r.stage.name] for r in results
                if r.stage.name in r.test_samples}
