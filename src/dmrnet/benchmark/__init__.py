"""Methods x seeds orchestration: train, select on validation, test every subset, write results.

``run_benchmark`` trains each method for each seed with Lightning, picks the checkpoint with the
best validation mean-over-subsets metric, evaluates every non-empty subset on the test split and
writes ``results.json``, ``results.csv``, ``report.md`` and ``per_subset.png`` (see
:mod:`dmrnet.report`). A method's run is its stages in order (most methods have one; see
:class:`dmrnet.methods.Method`); the glue names no method.

One module per job: :mod:`~dmrnet.benchmark.config` (what to run, its checks and the dataset's
defaults), :mod:`~dmrnet.benchmark.runs` (training and testing the stages of every run, side by
side where that helps, resuming, writing) and :mod:`~dmrnet.benchmark.statistics` (summaries,
paired comparisons, the gap to the reference method).
"""

from dmrnet.benchmark.config import (
    FIELD_TYPES,
    NUMBER_RULES,
    RESUME_FREE,
    BenchmarkConfig,
    BenchmarkError,
    apply_dataset_defaults,
    check_types,
    method_settings,
    scale_epochs,
    set_dotted,
    steps_per_epoch,
    validation_interval,
)
from dmrnet.benchmark.runs import (
    MIN_CONCURRENT_GFLOP,
    REGENERATED,
    concurrent_runs,
    filter_noise,
    output_folder,
    prepare,
    quiet_lightning,
    resume_benchmark,
    run_benchmark,
)
from dmrnet.benchmark.statistics import (
    SAMPLES,
    gap_to_reference,
    load_samples,
    paired_comparisons,
    save_samples,
    summarize_runs,
)
from dmrnet.errors import RunInterruptedError

__all__ = [
    "FIELD_TYPES",
    "MIN_CONCURRENT_GFLOP",
    "NUMBER_RULES",
    "REGENERATED",
    "RESUME_FREE",
    "SAMPLES",
    "BenchmarkConfig",
    "BenchmarkError",
    "RunInterruptedError",
    "apply_dataset_defaults",
    "check_types",
    "concurrent_runs",
    "filter_noise",
    "gap_to_reference",
    "load_samples",
    "method_settings",
    "output_folder",
    "paired_comparisons",
    "prepare",
    "quiet_lightning",
    "resume_benchmark",
    "run_benchmark",
    "save_samples",
    "scale_epochs",
    "set_dotted",
    "steps_per_epoch",
    "summarize_runs",
    "validation_interval",
]
