"""The Weight Evolution core (Lin et al., ACM MM 2021, Sec. 3): torch only.

checks (hparam vocabulary and validation), hparams (the paper's hyper-parameters: defaults,
bounds, ImageNet values), rate (Eq. 2), units (pools and importance, Eq. 1),
selection (Sec. 3.1, Eq. 4), matching (Sec. 3.2.1), crossover (Eqs. 5-6), paper_step (one step as
the paper prints it), authors_step (one step as the authors' script does it), hook (the WeightEvolution
training hook) and reference (the per-filter loop oracle). Modules import each other by their own
paths, never through this package, which only re-exports the public API (no name here shadows a submodule).
"""

from we.core.checks import INTERVAL_UNITS, KINDS, LEVELS, MATCHINGS, SELECTIONS, Alpha
from we.core.hook import SCHEDULE_KEYS, WeightEvolution, paper_step_hparams
from we.core.hparams import HPARAMS, PAPER_STEP_DEFAULTS, PAPER_STEP_IMAGENET, HParam
from we.core.authors_step import (FLAVOURS, AUTHORS_STEP_DEFAULTS, AuthorsStep, evolve_authors_step,
                              inferior_counts, authors_step_hparams, stage_rate, threshold)
from we.core.paper_step import evolve
from we.core.rate import selection_rate
from we.core.reference import evolve_reference
from we.core.units import Pool, gather_units, pool_layout

__all__ = [
    "WeightEvolution", "evolve", "selection_rate", "PAPER_STEP_DEFAULTS", "SCHEDULE_KEYS", "paper_step_hparams",
    "HPARAMS", "HParam", "PAPER_STEP_IMAGENET",
    "KINDS", "SELECTIONS", "MATCHINGS", "LEVELS", "INTERVAL_UNITS", "Alpha",
    "AuthorsStep", "AUTHORS_STEP_DEFAULTS", "FLAVOURS", "authors_step_hparams", "evolve_authors_step",
    "stage_rate", "threshold", "inferior_counts",
    "Pool", "gather_units", "pool_layout", "evolve_reference",
]
