"""The numbers behind ``medxai cohort report``: regions, features, statistics and the cohort analysis
on synthetic stacks whose answer is planted."""

from __future__ import annotations

import numpy as np
import pytest
from planted import FRACTIONS, WINDOW, chest, planted_cohort, to_unit
from scipy import stats

from medxai.biomarkers.analysis import CaseImages, ReportSettings, _MapSums, analyse_cohort
from medxai.biomarkers.features import ct_features, to_hu
from medxai.biomarkers.regions import LUNG_ZONES, ct_regions, height_of
from medxai.biomarkers.stats import auroc_with_ci, bh_q, paired_test, pixel_test


def test_zones_partition_the_lungs_and_heights_follow_the_fractions() -> None:
    hu, lungs = chest()
    r = ct_regions(hu, lungs, FRACTIONS)
    zones = np.stack([r[z] for z in LUNG_ZONES])
    assert (zones.sum(0) == lungs).all()  # disjoint, and together the lungs
    assert [height_of(f) for f in FRACTIONS] == ["upper", "middle", "middle", "lower"]
    assert r["lower_rind"][:3].sum() == 0 and r["lower_rind"][3].sum() > 0
    share = r["rind"][0].sum() / lungs[0].sum()
    assert 0.45 <= share <= 0.65  # an equal-area split up to ties in the distance
    dist_inner = r["core"][0] & ~r["rind"][0]
    assert dist_inner.any()
    assert not (r["mediastinum"] & lungs).any() and not (r["chest_wall"] & lungs).any()
    assert r["mediastinum"][0, 16, 16] and r["chest_wall"][0, 16, 1]  # between the lungs; the side of the body
    with pytest.raises(ValueError, match="stack"):
        ct_regions(hu[:3], lungs, FRACTIONS)


def test_ct_features_measure_planted_fractions() -> None:
    hu, lungs = chest()
    n = lungs.sum()
    hu2 = hu.copy()
    idx = np.random.default_rng(0).permutation(np.argwhere(lungs))  # spread over every slice
    hu2[tuple(idx[: n // 4].T)] = -970.0  # a quarter of the lungs below -950
    hu2[tuple(idx[n // 4 : n // 2].T)] = -400.0  # a quarter in the high-attenuation band
    f = ct_features(hu2, lungs, WINDOW)
    assert f["laa950_pct"] == pytest.approx(100 * (n // 4) / n)
    assert f["haa_pct"] == pytest.approx(100 * (n // 2 - n // 4) / n)
    flat = ct_features(hu, lungs, WINDOW)
    assert flat["glcm_contrast"] == 0.0 and flat["glcm_homogeneity"] == pytest.approx(1.0)
    assert f["glcm_contrast"] > 0
    assert np.isnan(ct_features(hu, np.zeros_like(lungs), WINDOW)["mean_hu"])
    np.testing.assert_allclose(to_hu(to_unit(hu), WINDOW), np.clip(hu, *WINDOW), atol=1e-3)


def test_statistics_match_scipy_and_the_textbook() -> None:
    p = np.array([0.01, 0.04, 0.03, 0.2, np.nan])
    q = bh_q(p)
    # BH by hand: sorted p (0.01, 0.03, 0.04, 0.2) * m / rank, then the running minimum from the top
    np.testing.assert_allclose(q[:4], [0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.2])
    assert np.isnan(q[4])
    rng = np.random.default_rng(0)
    d = rng.normal(1.0, 1.0, 40)
    t = paired_test(d)
    assert t.p == pytest.approx(stats.wilcoxon(d).pvalue)
    assert t.ci_low < np.median(d) < t.ci_high and t.dz == pytest.approx(d.mean() / d.std(ddof=1))
    assert paired_test(np.zeros(10)).p == 1.0
    x = rng.normal(0.2, 1.0, (30, 3, 4))
    pt = pixel_test(x)
    np.testing.assert_allclose(pt["t"], stats.ttest_1samp(x, 0.0, axis=0).statistic)
    sums = _MapSums()
    for xi in x:
        sums.add(xi)
    m = sums.result("toward", np.zeros((3, 4), np.float32))
    np.testing.assert_allclose(m.t, pt["t"], rtol=1e-6)
    np.testing.assert_allclose(m.q, pt["q"], rtol=1e-6)
    np.testing.assert_allclose(m.share_same_sign, pt["share_same_sign"])
    y = np.array([0] * 20 + [1] * 20)
    a, lo, hi = auroc_with_ci(np.r_[rng.normal(0, 1, 20), rng.normal(3, 1, 20)], y)
    assert a > 0.9 and lo <= a <= hi
    assert np.isnan(auroc_with_ci(np.arange(5.0), np.zeros(5))[0])


def test_analysis_ranks_the_planted_region_and_flags_the_shortcut() -> None:
    cases = planted_cohort()
    every = ReportSettings(n_resamples=500, top_k=1000)  # every significant feature is checked for a shortcut
    a = analyse_cohort(iter(cases), every)
    assert a.n_cases == 24
    rank, q = a.rank_of("regions", "lower_rind")
    assert rank == 1 and q < 0.05
    assert a.rank_of("regions", "lower_rind", "away")[0] == 1
    haa = next(r for r in a.features if (r.region, r.feature, r.direction) == ("lungs", "haa_pct", "toward"))
    assert haa.wants == "more" and haa.q < 0.05 and not haa.shortcut_candidate
    assert haa.auroc > 0.9  # the outcome's feature tells the outcome
    assert a.primary == "span"  # both sides: the shortcut check reads toward minus away
    dense = next(r for r in a.features if (r.region, r.feature, r.direction) == ("chest_wall", "dense_pct", "span"))
    assert dense.wants == "more" and dense.q < 0.05
    assert dense.shortcut_candidate and "chest_wall/dense_pct" in a.shortcut_candidates
    assert abs(dense.auroc - 0.5) < 0.1
    untouched = next(r for r in a.features if (r.region, r.feature, r.direction) == ("mediastinum", "mean_hu", "toward"))
    assert untouched.wants == "unchanged"
    lower_rind = ct_regions(*chest(), FRACTIONS)["lower_rind"][3]
    m = a.maps["toward"]
    assert 350 < m.mean_change[3][lower_rind].mean() < 450 and (m.q[3][lower_rind] < 0.05).all()
    # nothing depends on the order the cases arrive in, and a rerun gives the same digits
    b = analyse_cohort(iter(cases[::-1]), every)
    assert [(r.region, r.feature, r.direction, r.rank) for r in a.features] == [
        (r.region, r.feature, r.direction, r.rank) for r in b.features
    ]


def test_too_few_or_mismatched_cases_are_refused() -> None:
    cases = planted_cohort(4)
    with pytest.raises(ValueError, match="at least 3"):
        analyse_cohort(iter(cases[:2]))
    odd = CaseImages("odd", 0, cases[0].query[:3], cases[0].base[:3], cases[0].toward[:3], None, cases[0].mask[:3])
    with pytest.raises(ValueError, match="odd"):
        analyse_cohort(iter([*cases, odd]))


def test_fundus_lesions_removed_by_the_counterfactual_fall_and_vessels_stay() -> None:
    """Fundus phantoms: the 'counterfactual' is the same photograph drawn at grade 0 (same anatomy and
    noise, no lesion): both lesion counts must fall and the vessel area must not change."""
    from medxai.phantoms import fundus_config, make_fundus_case
    from medxai.transforms import FundusConfig, FundusTransform

    tf, cfg = FundusTransform(FundusConfig(size=64)), fundus_config("test")
    cases = []
    for seed in range(100, 160):
        case = make_fundus_case(seed, cfg)
        if case.label != 1 or len(cases) == 20:
            continue
        x = np.asarray(tf(np.array(case.rgb))["image"], np.float32)
        healthy = np.asarray(tf(np.array(make_fundus_case(seed, cfg, grade=0).rgb))["image"], np.float32)
        cases.append(CaseImages(f"f{seed}", 1, x, x, healthy, None, x.max(0) > 1e-6))
    a = analyse_cohort(iter(cases), ReportSettings(kind="fundus", n_resamples=300))
    assert a.n_cases == 20 and a.maps == {} and "no population map" in " ".join(a.notes)
    rows = {r.feature: r for r in a.features if r.direction == "toward"}
    assert rows["red_lesion_count"].wants == "less" and rows["bright_lesion_count"].wants == "less"
    assert rows["vessel_contrast"].wants == "unchanged", rows["vessel_contrast"]
    red_region = next(r for r in a.regions if r.region == "red_lesions")
    assert red_region.mean_change > 0  # dark lesions gone: brighter there
    assert all(r.direction == "toward" for r in a.regions)  # one direction only


def test_choose_steps_takes_the_minimal_flip_or_the_largest() -> None:
    from medxai.biomarkers.analysis import choose_steps

    steps = [-1.6, -0.8, -0.4, 0.4, 0.8, 1.6]
    p = [0.01, 0.2, 0.6, 0.7, 0.9, 0.99]  # the target's probability at each step
    assert choose_steps(steps, p, "flip") == (3, 1)  # toward: +0.4; away: -0.8, the first below 0.5
    assert choose_steps(steps, p, "largest") == (5, 0)
    assert choose_steps(steps, None, "flip") == (5, 0)  # no probabilities: the largest
    assert choose_steps(steps, [0.9] * 6, "flip") == (3, 0)  # away never gets below 0.5: its largest step
    assert choose_steps([1.0], [0.2], "flip") == (0, None)  # one direction (DVCE), no flip: that step
    with pytest.raises(ValueError, match="rule"):
        choose_steps(steps, p, "nearest")
