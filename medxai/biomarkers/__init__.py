"""Cohort-level biomarker analysis of counterfactual explanations (``medxai cohort report``).

Per case a method gives a base image (the reconstruction, or the query) and counterfactuals toward and
away from the target class. Across the cohort this package asks which pixels, which lung zones and
which measurable image features the counterfactuals change consistently, how strongly and how surely,
and whether a feature the model changes also relates to the outcome.

* :mod:`~medxai.biomarkers.regions` -- lung zones (upper / middle / lower x core / rind) and the
  regions outside the lungs (mediastinum, chest wall) on the stack grid; fundus lesion-type masks.
* :mod:`~medxai.biomarkers.features` -- quantitative features per region (HU statistics, %LAA-950,
  high-attenuation area, grey-level co-occurrence texture; fundus lesion counts and areas).
* :mod:`~medxai.biomarkers.stats` -- paired tests with Benjamini-Hochberg FDR, bootstrap confidence
  intervals, pixel-wise population maps, AUROC against the outcome.
* :mod:`~medxai.biomarkers.analysis` -- the cohort analysis itself, returning typed tables.

Numbers only: no DICOM, no torch; ``pipelines.cohort_report`` reads the explanations and writes the
report.
"""

from __future__ import annotations

from medxai.biomarkers.analysis import (
    CohortAnalysis,
    CohortCases,
    FeatureRow,
    PopulationMap,
    RegionRow,
    ReportSettings,
    analyse_cohort,
)

__all__ = [
    "CohortAnalysis",
    "CohortCases",
    "FeatureRow",
    "PopulationMap",
    "RegionRow",
    "ReportSettings",
    "analyse_cohort",
]
