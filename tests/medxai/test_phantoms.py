"""Tests of the CT and fundus phantoms (medxai.phantoms): determinism, anatomy, labels, shortcuts."""

from __future__ import annotations

import ast
import csv
import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from medxai.phantoms import (
    CT_MASK_NAMES,
    CT_TEST,
    FUNDUS_MASK_NAMES,
    FUNDUS_TEST,
    LABEL_COLUMNS,
    CTPhantomConfig,
    FundusPhantomConfig,
    case_seed,
    cohort_seeds,
    ct_config,
    dr_grade,
    fundus_config,
    make_ct_case,
    make_ct_cohort,
    make_fundus_case,
    make_fundus_cohort,
    write_labels_csv,
)
from medxai.phantoms._common import sigmoid

# a smaller CT grid for cohort-level tests (~0.1 s per case)
CT_TINY = CTPhantomConfig(n_slices=24, matrix=64, vessel_points=60)


@pytest.fixture(scope="module")
def ct_case():
    return make_ct_case(7, CT_TEST, marker=True, extent=0.2)


@pytest.fixture(scope="module")
def ct_biased():
    return make_ct_cohort(60, seed=11, config=CT_TINY, shortcut=1.0)


@pytest.fixture(scope="module")
def fundus_cases():
    return [make_fundus_case(s, FUNDUS_TEST, grade=g, marker=True) for s, g in zip(range(5), range(5))]


# ------------------------------------------------------------------------------------------
# CT
# ------------------------------------------------------------------------------------------


def test_ct_deterministic_and_seed_dependent():
    a = make_ct_case(3, CT_TINY)
    b = make_ct_case(3, CT_TINY)
    c = make_ct_case(4, CT_TINY)
    assert np.array_equal(a.hu, b.hu)
    for k in CT_MASK_NAMES:
        assert np.array_equal(a.masks[k], b.masks[k])
    assert (a.label, a.extent, a.risk, a.has_marker, a.spacing) == (b.label, b.extent, b.risk, b.has_marker, b.spacing)
    assert not np.array_equal(a.hu, c.hu)
    assert a.spacing != c.spacing


def test_ct_shapes_dtypes_ranges(ct_case):
    c = ct_case
    assert c.hu.shape == CT_TEST.shape and c.hu.dtype == np.float32
    assert set(c.masks) == set(CT_MASK_NAMES)
    for m in c.masks.values():
        assert m.shape == c.hu.shape and m.dtype == bool
    assert not c.hu.flags.writeable
    assert -1024.0 <= c.hu.min() and c.hu.max() <= 3071.0
    sx, sy, sz = c.spacing
    assert sx == sy and 340 / 96 <= sx <= 420 / 96 and 3.0 < sz < 10.0
    lungs = c.masks["lungs"]
    healthy = lungs & ~c.masks["biomarker"]
    assert -920 < np.median(c.hu[healthy]) < -760
    # lungs span most of the scan length
    z = np.flatnonzero(lungs.any(axis=(1, 2)))
    assert (z[-1] - z[0] + 1) / c.hu.shape[0] > 0.75
    # soft tissue and bone exist outside the lungs; air outside the body
    outside = c.hu[~lungs & (c.hu > -300)]
    assert np.mean((outside > -30) & (outside < 100)) > 0.4
    assert np.mean((outside > -160) & (outside < -60)) > 0.05  # fat
    assert np.sum(c.hu > 400) > 100
    assert np.median(c.hu[:, :3, :3]) < -950
    assert c.masks["marker"].any() and c.hu[c.masks["marker"]].max() > 1500
    assert 0 < c.info["lung_z_first"] < c.info["lung_z_last"] < c.hu.shape[0]


def test_ct_masks_where_they_belong(ct_case):
    emph = next(c for c in (make_ct_case(s, CT_TEST, extent=0.15) for s in range(20)) if c.masks["distractor"].any())
    for c in (ct_case, emph):
        m = c.masks
        assert not (m["biomarker"] & ~m["lungs"]).any()
        assert not (m["distractor"] & ~m["lungs"]).any()
        assert not (m["marker"] & m["lungs"]).any()
        assert not (m["biomarker"] & m["distractor"]).any()
        assert c.extent == pytest.approx(m["biomarker"].sum() / m["lungs"].sum())
    # emphysema holes are low density
    assert np.median(emph.hu[emph.masks["distractor"]]) < -900
    # fibrosis is denser than the healthy lung on average
    assert (
        np.mean(ct_case.hu[ct_case.masks["biomarker"]])
        > np.mean(ct_case.hu[ct_case.masks["lungs"] & ~ct_case.masks["biomarker"]]) + 100
    )


def test_ct_biomarker_basal_and_subpleural():
    for seed in range(3):
        c = make_ct_case(seed, CT_TEST, extent=0.15)
        bio, lungs = c.masks["biomarker"], c.masks["lungs"]
        z = np.flatnonzero(lungs.any(axis=(1, 2)))
        mid = (z[0] + z[-1]) / 2
        basal = np.mean(np.nonzero(bio)[0] < mid)
        assert basal > 0.6, f"seed {seed}: only {basal:.2f} of the biomarker is basal"
        sx, sy, sz = c.spacing
        d = ndimage.distance_transform_edt(np.pad(lungs, 1), sampling=(sz, sy, sx))[1:-1, 1:-1, 1:-1]
        assert np.median(d[bio]) < 0.6 * np.median(d[lungs])
        assert np.mean(d[bio] < 15.0) > 0.7


def test_ct_extent_override_gives_nested_counterfactuals():
    lo = make_ct_case(5, CT_TINY, extent=0.05, marker=False)
    hi = make_ct_case(5, CT_TINY, extent=0.25, marker=False)
    assert np.array_equal(lo.masks["lungs"], hi.masks["lungs"])
    assert not (lo.masks["biomarker"] & ~hi.masks["biomarker"]).any()
    assert lo.extent < hi.extent and lo.risk < hi.risk
    assert lo.label <= hi.label  # same uniform draw
    far = ~ndimage.binary_dilation(hi.masks["biomarker"], np.ones((3, 3, 3), bool), iterations=3)
    assert np.allclose(lo.hu[far], hi.hu[far])
    zero = make_ct_case(5, CT_TINY, extent=0.0)
    assert zero.extent == 0.0 and not zero.masks["biomarker"].any()


def test_ct_marker_switch_changes_only_marker_region():
    on = make_ct_case(9, CT_TINY, marker=True)
    off = make_ct_case(9, CT_TINY, marker=False)
    assert on.has_marker and not off.has_marker
    assert not off.masks["marker"].any() and on.masks["marker"].any()
    assert (on.label, on.extent) == (off.label, off.extent)
    near = ndimage.binary_dilation(on.masks["marker"], np.ones((3, 3, 3), bool), iterations=3)
    assert np.array_equal(on.hu[~near], off.hu[~near])


def test_ct_marker_lead_radius_makes_a_thicker_lead():
    thin = make_ct_case(9, CT_TINY, marker=True)
    thick = make_ct_case(9, dataclasses.replace(CT_TINY, marker_lead_radius_mm=4.0), marker=True)
    assert thick.masks["marker"].sum() > 1.5 * thin.masks["marker"].sum()
    assert (thick.label, thick.extent) == (thin.label, thin.extent)  # only the marker changes


def test_ct_label_model(ct_biased):
    for c in ct_biased:
        assert c.risk == pytest.approx(float(sigmoid(CT_TINY.label_intercept + CT_TINY.label_slope * c.extent)))
        assert c.label in (0, 1)
    ext = np.array([c.extent for c in ct_biased])
    lab = np.array([c.label for c in ct_biased])
    assert 0.15 < lab.mean() < 0.75
    assert ext[lab == 1].mean() > ext[lab == 0].mean() + 0.05
    assert lab[ext > np.median(ext)].mean() > lab[ext <= np.median(ext)].mean() + 0.3


def test_ct_shortcut_biased_and_unbiased(ct_biased):
    assert all(c.has_marker == bool(c.label) for c in ct_biased)
    unbiased = make_ct_cohort(40, seed=12, config=dataclasses.replace(CT_TINY, marker_rate=0.5), shortcut=0.0)
    m = np.array([c.has_marker for c in unbiased], float)
    y = np.array([c.label for c in unbiased], float)
    assert 0.2 < m.mean() < 0.8
    assert abs(np.corrcoef(m, y)[0, 1]) < 0.4


def test_ct_cohort_seeds_and_regeneration(ct_biased):
    assert [c.seed for c in ct_biased] == cohort_seeds(60, 11)
    assert [c.seed for c in ct_biased[:5]] == [case_seed(11, i) for i in range(5)]
    assert not set(cohort_seeds(200, 11)) & set(cohort_seeds(200, 12))
    c = ct_biased[3]
    again = make_ct_case(c.seed, CT_TINY, marker=c.has_marker)
    assert np.array_equal(again.hu, c.hu) and again.label == c.label
    first = make_ct_cohort(2, seed=11, config=CT_TINY, shortcut=1.0)
    assert np.array_equal(first[1].hu, ct_biased[1].hu)


def test_ct_invalid_arguments():
    with pytest.raises(ValueError, match="matrix"):
        CTPhantomConfig(matrix=8)
    with pytest.raises(ValueError, match="noise_hu"):
        CTPhantomConfig(noise_hu=(30.0, 10.0))
    with pytest.raises(ValueError, match="shortcut"):
        make_ct_cohort(2, seed=0, config=CT_TINY, shortcut=1.5)
    with pytest.raises(ValueError, match="extent"):
        make_ct_case(0, CT_TINY, extent=2.0)
    with pytest.raises(ValueError, match="marker"):
        make_ct_case(0, CT_TINY, marker="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed"):
        make_ct_case(-1, CT_TINY)
    with pytest.raises(TypeError, match="seed"):
        make_ct_case(1.5, CT_TINY)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="emphysema_holes"):
        CTPhantomConfig(emphysema_holes=(10, 10))
    with pytest.raises(ValueError, match="marker_lead_radius_mm"):
        CTPhantomConfig(marker_lead_radius_mm=50.0)
    with pytest.raises(ValueError, match="name"):
        ct_config("huge")
    assert ct_config("benchmark").matrix == 256


# ------------------------------------------------------------------------------------------
# fundus
# ------------------------------------------------------------------------------------------


def test_fundus_deterministic_and_seed_dependent():
    a = make_fundus_case(21)
    b = make_fundus_case(21)
    c = make_fundus_case(22)
    assert np.array_equal(a.rgb, b.rgb)
    for k in FUNDUS_MASK_NAMES:
        assert np.array_equal(a.masks[k], b.masks[k])
    assert (a.grade, a.counts, a.eye) == (b.grade, b.counts, b.eye)
    assert not np.array_equal(a.rgb, c.rgb)


def test_fundus_shapes_and_appearance(fundus_cases):
    for c in fundus_cases:
        S = FUNDUS_TEST.size
        assert c.rgb.shape == (S, S, 3) and c.rgb.dtype == np.uint8
        assert set(c.masks) == set(FUNDUS_MASK_NAMES)
        for m in c.masks.values():
            assert m.shape == (S, S) and m.dtype == bool
        fov = c.masks["fov"]
        assert 0.45 < fov.mean() < 0.75
        inside = c.rgb[fov & ~c.masks["lesions"]].astype(float).mean(axis=0)
        assert inside[0] > 1.8 * inside[1] > inside[2]  # orange-red fundus
        outside = c.rgb[~fov & ~c.masks["marker"]].astype(float)
        assert outside.mean() < 15
        # optic disc brighter than the fundus, macula darker than its surround
        rr, cc = np.mgrid[:S, :S]
        d_disc = np.hypot(rr - c.info["disc_row"], cc - c.info["disc_col"])
        d_fov = np.hypot(rr - c.info["fovea_row"], cc - c.info["fovea_col"])
        dd = c.info["disc_diameter_px"]
        lum = c.rgb.astype(float).sum(axis=2)
        assert lum[d_disc < dd / 3].mean() > 1.3 * lum[fov].mean()
        ring = fov & (d_fov > dd) & (d_fov < 1.6 * dd) & ~c.masks["lesions"]
        assert lum[(d_fov < 0.25 * dd) & ~c.masks["lesions"]].mean() < lum[ring].mean()


def test_fundus_lesion_masks_and_grades(fundus_cases):
    for target, c in enumerate(fundus_cases):
        m = c.masks
        union = m["microaneurysms"] | m["haemorrhages"] | m["exudates"] | m["cotton_wool"]
        assert np.array_equal(union, m["lesions"])
        assert not (m["lesions"] & ~m["fov"]).any()
        assert not (m["marker"] & m["fov"]).any()  # default: stamp in a corner, outside the FOV
        assert c.grade == target
        assert c.grade == dr_grade(
            c.counts["microaneurysms"], c.counts["haemorrhages"], c.counts["exudate_clusters"], c.counts["cotton_wool"]
        )
        assert c.label == int(c.grade >= 2)
        assert c.extent == pytest.approx(m["lesions"].sum() / m["fov"].sum())
        assert (c.extent > 0) == (c.grade > 0)
        for name, key in (
            ("microaneurysms", "microaneurysms"),
            ("haemorrhages", "haemorrhages"),
            ("cotton_wool", "cotton_wool"),
            ("exudates", "exudate_clusters"),
        ):
            assert m[name].any() == (c.counts[key] > 0)
    # lesions look like lesions: haemorrhages dark red, exudates yellow
    c4 = fundus_cases[4]
    he = c4.rgb[c4.masks["haemorrhages"]].astype(float).mean(axis=0)
    fundus = c4.rgb[c4.masks["fov"] & ~c4.masks["lesions"]].astype(float).mean(axis=0)
    assert he[0] < fundus[0] and he[1] < fundus[1]
    ex = c4.rgb[c4.masks["exudates"]].astype(float).mean(axis=0)
    assert ex[1] > 1.5 * fundus[1]


def test_dr_grade_monotone_in_counts():
    values = range(0, 26, 1)
    grid = list(itertools.product([0, 1, 5], values, [0, 1, 3], [0, 1, 2, 3, 5]))
    for ma, he, ex, cw in grid:
        g = dr_grade(ma, he, ex, cw)
        assert 0 <= g <= 4
        for bumped in ((ma + 1, he, ex, cw), (ma, he + 1, ex, cw), (ma, he, ex + 1, cw), (ma, he, ex, cw + 1)):
            assert dr_grade(*bumped) >= g
    assert [dr_grade(0, 0, 0, 0), dr_grade(3, 0, 0, 0), dr_grade(3, 2, 0, 0), dr_grade(0, 12, 0, 0), dr_grade(0, 20, 0, 3)] == [
        0,
        1,
        2,
        3,
        4,
    ]
    with pytest.raises(ValueError, match="counts"):
        dr_grade(-1, 0, 0, 0)


def test_fundus_marker_switch_and_in_fov_option():
    on = make_fundus_case(31, marker=True)
    off = make_fundus_case(31, marker=False)
    assert on.masks["marker"].any() and not off.masks["marker"].any()
    diff = np.any(on.rgb != off.rgb, axis=2)
    assert not (diff & ~on.masks["marker"]).any()
    inside = make_fundus_case(31, fundus_config("test", marker_in_fov=True), marker=True)
    assert (inside.masks["marker"] & inside.masks["fov"]).sum() > 0.5 * inside.masks["marker"].sum()


def test_fundus_cohort_shortcut_and_variation():
    biased = make_fundus_cohort(40, seed=3, shortcut=1.0)
    assert all(c.has_marker == bool(c.label) for c in biased)
    assert {c.eye for c in biased} == {"OD", "OS"}
    assert len({c.grade for c in biased}) == 5
    discs = np.array([[c.info["disc_row"], c.info["disc_col"]] for c in biased])
    assert discs[:, 1].std() > 10  # left and right eyes, varied position
    unbiased = make_fundus_cohort(60, seed=4, config=fundus_config("test", marker_rate=0.5), shortcut=0.0)
    m = np.array([c.has_marker for c in unbiased], float)
    y = np.array([c.label for c in unbiased], float)
    assert 0.2 < m.mean() < 0.8
    assert abs(np.corrcoef(m, y)[0, 1]) < 0.4
    assert not {c.seed for c in biased} & {c.seed for c in unbiased}


def test_fundus_invalid_arguments():
    with pytest.raises(ValueError, match="size"):
        FundusPhantomConfig(size=16)
    with pytest.raises(ValueError, match="grade_prior"):
        FundusPhantomConfig(grade_prior=(1.0, 1.0, 0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="lesion_mix"):
        FundusPhantomConfig(lesion_mix="random")
    with pytest.raises(ValueError, match="grade"):
        make_fundus_case(0, grade=7)
    with pytest.raises(ValueError, match="shortcut"):
        make_fundus_cohort(1, seed=0, shortcut=-0.1)


# ------------------------------------------------------------------------------------------
# label table and import rules
# ------------------------------------------------------------------------------------------


def test_write_labels_csv(tmp_path: Path, ct_biased):
    fundus = make_fundus_cohort(3, seed=5)
    p_ct = write_labels_csv(ct_biased[:4], tmp_path / "ct" / "labels.csv")
    p_fu = write_labels_csv(fundus, tmp_path / "fundus.csv")
    with open(p_ct, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0].keys()) == LABEL_COLUMNS and len(rows) == 4
    for row, c in zip(rows, ct_biased):
        assert int(row["seed"]) == c.seed and int(row["label"]) == c.label
        assert float(row["extent"]) == pytest.approx(c.extent, abs=1e-6)
        assert float(row["risk"]) == pytest.approx(c.risk, abs=1e-6)
        assert int(row["has_marker"]) == int(c.has_marker) and row["case_id"] == c.case_id
    with open(p_fu, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["grade"]) for r in rows] == [c.grade for c in fundus]
    assert not list(tmp_path.glob("**/*.tmp"))
    with pytest.raises(ValueError, match="path"):
        write_labels_csv(fundus, tmp_path)


def test_phantoms_import_only_numeric_libraries():
    import medxai.phantoms as pkg

    forbidden = {"dicom_io", "pydicom", "pipelines", "torch", "monai"}
    for path in Path(pkg.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for n in names:
                assert n.split(".")[0] not in forbidden, f"{path.name} imports {n}"
    assert set(pkg.__all__) <= set(dir(pkg))
