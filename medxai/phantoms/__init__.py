"""Phantoms with a known answer: chest CT (fibrosis prognosis) and fundus photographs (DR).

Every case is deterministic from an integer seed, carries ground-truth masks of the biomarker,
a label-independent distractor and an optional shortcut marker, and a label drawn from the
biomarker. Cohorts derive case ``i``'s seed from ``SeedSequence([seed, i])`` and can make the
marker follow the label with probability ``shortcut`` (a biased split). Pure numpy/scipy.
"""

from __future__ import annotations

from ._common import case_seed
from .cohort import LABEL_COLUMNS, cohort_seeds, label_rows, write_label_rows, write_labels_csv
from .ct import (
    CT_BENCHMARK,
    CT_MASK_NAMES,
    CT_TEST,
    CTCase,
    CTPhantomConfig,
    ct_config,
    iter_ct_cohort,
    make_ct_case,
    make_ct_cohort,
)
from .fundus import (
    FUNDUS_BENCHMARK,
    FUNDUS_MASK_NAMES,
    FUNDUS_TEST,
    FundusCase,
    FundusPhantomConfig,
    dr_grade,
    fundus_config,
    iter_fundus_cohort,
    make_fundus_case,
    make_fundus_cohort,
)

__all__ = [
    "CTCase",
    "CTPhantomConfig",
    "CT_BENCHMARK",
    "CT_MASK_NAMES",
    "CT_TEST",
    "FUNDUS_BENCHMARK",
    "FUNDUS_MASK_NAMES",
    "FUNDUS_TEST",
    "FundusCase",
    "FundusPhantomConfig",
    "LABEL_COLUMNS",
    "case_seed",
    "cohort_seeds",
    "ct_config",
    "dr_grade",
    "fundus_config",
    "iter_ct_cohort",
    "iter_fundus_cohort",
    "label_rows",
    "make_ct_case",
    "make_ct_cohort",
    "make_fundus_case",
    "make_fundus_cohort",
    "write_label_rows",
    "write_labels_csv",
]
