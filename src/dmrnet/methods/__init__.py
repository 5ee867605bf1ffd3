"""Methods, each a registered unit (:class:`Method`): DMRNet and its family (baseline,
full_only, ablations), the peers ShaSpec and MMANet, and dedicated models per subset; and
boosters (:class:`Booster`), additions a method composes.

Add one by subclassing :class:`Method` and decorating it with :func:`register_method`; see
``docs/architecture.md``.
"""

from dmrnet.methods import dedicated, dmrnet, mmanet, shaspec  # noqa: F401  (registers them)
from dmrnet.methods.base import (
    METHODS,
    Choice,
    Contribution,
    Method,
    ModelConfig,
    Objective,
    ObjectivePart,
    TrainingContext,
    build_method,
    checkpoint_network,
    create_model,
    get_method,
    load_weights,
    option_lines,
    options_summary,
    read_checkpoint,
    register_checkpoint_upgrade,
    register_method,
    upgrade_record,
    upgrade_settings,
)
from dmrnet.methods.boosters import BOOSTERS, Booster, compose_options, register_booster
from dmrnet.records import RunRecord, Scores, Stage, StageResult

__all__ = [
    "BOOSTERS",
    "METHODS",
    "Booster",
    "Choice",
    "Contribution",
    "Method",
    "ModelConfig",
    "Objective",
    "ObjectivePart",
    "RunRecord",
    "Scores",
    "Stage",
    "StageResult",
    "TrainingContext",
    "build_method",
    "checkpoint_network",
    "compose_options",
    "create_model",
    "get_method",
    "load_weights",
    "option_lines",
    "options_summary",
    "read_checkpoint",
    "register_booster",
    "register_checkpoint_upgrade",
    "register_method",
    "upgrade_record",
    "upgrade_settings",
]
