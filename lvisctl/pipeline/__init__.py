"""Multi-step runs built from the layers: the demo (``lvisctl demo``) and the Table 2 ablation
(``benchmarks/stage2_ablation.py``). Both are lists of training phases (:class:`PhaseSpec`) run by
:func:`run_phases` in one run directory: synthetic data, training (skipped when finished, resumed when
started), predictions on val and the LVIS evaluation of every phase, then one comparison table.
"""

from lvisctl.pipeline.phases import (
    ABLATION_ROWS,
    DEMO_STAGE1,
    DEMO_STAGE2,
    PhaseSpec,
    PipelineResult,
    ensure_dataset,
    ensure_predictions,
    evaluate_phase,
    phase_finished,
    run_phases,
    train_phase,
)

__all__ = [
    "ABLATION_ROWS",
    "DEMO_STAGE1",
    "DEMO_STAGE2",
    "PhaseSpec",
    "PipelineResult",
    "ensure_dataset",
    "ensure_predictions",
    "evaluate_phase",
    "phase_finished",
    "run_phases",
    "train_phase",
]
