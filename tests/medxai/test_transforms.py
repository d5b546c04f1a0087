"""Tests of medxai.transforms on synthetic CT phantoms and scikit-image's fundus photograph."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medxai.transforms import (
    LPS_TO_RAS,
    CTStackConfig,
    CTStackTransform,
    CTVolumeConfig,
    FundusConfig,
    FundusTransform,
    SelectSlices,
    ct_input_dict,
    ct_volume_transforms,
    detect_fov,
    metatensor_to_volume_arrays,
    volume_to_metatensor,
)

SPACING = (0.7, 0.7, 2.5)


# ------------------------------------------------------------------------------------------ helpers
def _rotation(deg_z: float, deg_x: float) -> np.ndarray:
    a, b = np.deg2rad(deg_z), np.deg2rad(deg_x)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


GEOMETRIES = {
    "axial": np.eye(3),
    "oblique": _rotation(12.0, 8.0),
    "feet_first": np.diag([-1.0, 1.0, -1.0]),  # x runs to patient right, z runs inferior
}


def _phantom(shape=(40, 80, 96), lung_z=(6, 34), with_lungs=True, seed=0):
    """Body ellipse (~0 HU) in air (-1000), two lung ellipsoids (-850), spine (+400), lesion mask.

    Returns ``(hu_zyx float32, lungs_zyx bool, lesion_zyx uint8)``; the lesion sits in the lung at
    high x index.
    """
    nz, ny, nx = shape
    z, y, x = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    cy, cx = ny / 2, nx / 2
    vol = np.full(shape, -1000.0, np.float32)
    vol[((y - cy) / (ny * 0.42)) ** 2 + ((x - cx) / (nx * 0.45)) ** 2 <= 1] = 0.0
    zc, zr = (lung_z[0] + lung_z[1]) / 2, (lung_z[1] - lung_z[0]) / 2
    lungs = np.zeros(shape, bool)
    if with_lungs:
        for side in (-1, 1):
            lungs |= ((x - (cx + side * nx * 0.2)) / (nx * 0.15)) ** 2 + ((y - cy + 2) / (ny * 0.28)) ** 2 + (
                (z - zc) / zr
            ) ** 2 <= 1
    vol[lungs] = -850.0
    vol[((x - cx) / (nx * 0.06)) ** 2 + ((y - (cy + ny * 0.3)) / (ny * 0.07)) ** 2 <= 1] = 400.0  # spine, posterior
    vol += np.random.default_rng(seed).normal(0.0, 20.0, shape).astype(np.float32)
    lesion = ((x - (cx + nx * 0.2)) / (nx * 0.09)) ** 2 + ((y - cy) / (ny * 0.12)) ** 2 + ((z - zc) / (zr * 0.9)) ** 2 <= 1
    return vol, lungs, lesion.astype(np.uint8)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


@pytest.fixture(scope="module")
def phantom():
    return _phantom()


@pytest.fixture(scope="module", params=sorted(GEOMETRIES))
def ct_run(request, phantom):
    """One pass of the CT stack chain per geometry, with the lesion and a slice-id label."""
    vol, lungs, lesion = phantom
    direction = GEOMETRIES[request.param]
    zid = np.broadcast_to(np.arange(1, vol.shape[0] + 1, dtype=np.int32)[:, None, None], vol.shape).copy()
    inputs = (vol.copy(), lesion.copy(), zid.copy())
    ct = CTStackTransform(CTStackConfig(size=64), label_keys=("lesion", "zid"))
    out = ct(vol, SPACING, (-30.0, 12.5, 100.0), direction, labels={"lesion": lesion, "zid": zid})
    return dict(ct=ct, out=out, direction=direction, vol=vol, lungs=lungs, lesion=lesion, zid=zid, inputs=inputs)


# ------------------------------------------------------------------------------------------ geometry
def test_metatensor_round_trip_oblique_anisotropic():
    rng = np.random.default_rng(1)
    arr = rng.normal(size=(7, 5, 6)).astype(np.float32)
    before = arr.copy()
    spacing, origin, direction = (0.7, 0.9, 2.5), (-12.0, 30.5, 7.25), _rotation(20.0, -15.0)
    mt = volume_to_metatensor(arr, spacing, origin, direction)
    assert isinstance(mt, MetaTensor) and tuple(mt.shape) == (1, 6, 5, 7)
    np.testing.assert_array_equal(arr, before)  # input untouched
    # voxel (x=2, y=3, z=4) sits where the DICOM geometry says (after LPS -> RAS)
    assert mt[0, 2, 3, 4] == arr[4, 3, 2]
    ijk = np.array([2.0, 3.0, 4.0])
    lps = np.asarray(origin) + direction @ (np.asarray(spacing) * ijk)
    ras = (LPS_TO_RAS @ np.append(lps, 1.0))[:3]
    np.testing.assert_allclose((mt.affine.numpy() @ np.append(ijk, 1.0))[:3], ras, atol=1e-9)
    back, sp, org, dirn = metatensor_to_volume_arrays(mt)
    np.testing.assert_array_equal(back, arr)
    np.testing.assert_allclose(sp, spacing, atol=1e-9)
    np.testing.assert_allclose(org, origin, atol=1e-9)
    np.testing.assert_allclose(dirn, direction, atol=1e-9)
    mt[0, 0, 0, 0] = 99.0  # the MetaTensor does not share memory with the input
    assert arr[0, 0, 0] == before[0, 0, 0]


def test_select_slices_is_exact_and_invertible():
    data = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    img = MetaTensor(data.clone())
    sel = SelectSlices()
    out = sel(img, [4, 1])
    assert tuple(out.shape) == (4, 4, 3)  # (C*n, Y, X)
    torch.testing.assert_close(out[1].as_tensor(), data[0, :, :, 1].T)  # channel c*n+j = slice j of c
    torch.testing.assert_close(out[2].as_tensor(), data[1, :, :, 4].T)
    back = sel.inverse(out)
    assert tuple(back.shape) == (2, 3, 4, 5)
    torch.testing.assert_close(back[..., [1, 4]].as_tensor(), data[..., [1, 4]])
    assert float(back[..., [0, 2, 3]].abs().sum()) == 0.0


# ------------------------------------------------------------------------------------------ CT chain
def test_ct_stack_outputs_and_inputs_untouched(ct_run):
    out = ct_run["out"]
    img = out["image"]
    assert tuple(img.shape) == (4, 64, 64) and img.dtype == torch.float32
    assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    for key in ("lesion", "zid", "lung_mask"):
        assert tuple(out[key].shape) == (4, 64, 64)
    assert "body_mask" not in out
    for before, after in zip(ct_run["inputs"], (ct_run["vol"], ct_run["lesion"], ct_run["zid"])):
        np.testing.assert_array_equal(before, after)


def test_ct_slices_at_lung_fractions_and_unsampled_in_z(ct_run):
    out, lungs, direction = ct_run["out"], ct_run["lungs"], ct_run["direction"]
    idx = out["slice_indices"]
    zs = np.flatnonzero(lungs.any(axis=(1, 2)))
    superior_up = direction[2, 2] > 0  # LPS z of index axis z
    apex, base = (zs[-1], zs[0]) if superior_up else (zs[0], zs[-1])
    expected = [apex + f * (base - apex) for f in (0.2, 0.4, 0.6, 0.8)]
    np.testing.assert_allclose(idx, expected, atol=1.01)  # within one slice of the intended fraction
    # channel j is exactly source slice idx[j]: the slice-id label (nearest) holds idx[j] + 1 only
    zid = out["zid"].numpy()
    for j, k in enumerate(idx):
        assert set(np.unique(zid[j])) - {0.0} == {float(k + 1)}
    np.testing.assert_array_equal(out["image"].meta["slice_indices"], idx)


def test_ct_radiological_view(ct_run):
    """Rows run posterior (spine at the bottom), columns to patient left."""
    out, direction = ct_run["out"], ct_run["direction"]
    img = out["image"].numpy()
    bright_rows = np.nonzero(img[1] > 0.95)[0]  # spine, window top is +150 HU
    assert bright_rows.size and bright_rows.mean() > 40
    # the lesion is at high x index; it is on the patient's left iff x runs to patient left (+L)
    cols = np.nonzero(out["lesion"].numpy() > 0)[2]
    on_left_of_patient = direction[0, 0] > 0
    assert cols.size and ((cols.mean() > 32) == on_left_of_patient)


def test_ct_image_and_label_share_geometry_and_invert(ct_run):
    """An image and its mask go through the same chain; the inverse lands on the source slices."""
    ct, out, lesion, lungs = ct_run["ct"], ct_run["out"], ct_run["lesion"], ct_run["lungs"]
    idx = out["slice_indices"]
    # same geometry: the lesion lies inside the lung mask computed from the image
    les, lung_stack = out["lesion"].numpy() > 0, out["lung_mask"].numpy() > 0
    assert les.sum() > 0 and (les & lung_stack).sum() / les.sum() > 0.95
    vol, idx2 = ct.invert(out["lesion"], out)
    np.testing.assert_array_equal(idx, idx2)
    assert vol.shape == lesion.shape and vol.dtype == np.float32
    others = np.setdiff1d(np.arange(lesion.shape[0]), idx)
    assert float(np.abs(vol[others]).sum()) == 0.0
    assert _dice(vol[idx] > 0.5, lesion[idx]) > 0.9
    lung_back, _ = ct.invert(out["lung_mask"], out, nearest=True)
    assert set(np.unique(lung_back)) <= {0.0, 1.0}
    assert _dice(lung_back[idx] > 0.5, lungs[idx]) > 0.9


def test_ct_invert_multichannel_heatmap(ct_run):
    ct, out, vol = ct_run["ct"], ct_run["out"], ct_run["vol"]
    heat = np.ones((2, 4, 64, 64), np.float32)
    heat[1] *= 3.0
    back, idx = ct.invert(heat, out)
    assert back.shape == (2, *vol.shape)
    # inside the body on the selected slices the map is carried back unchanged
    body = vol[idx] > -500
    np.testing.assert_allclose(back[0][idx][body], 1.0, atol=1e-4)
    np.testing.assert_allclose(back[1][idx][body], 3.0, atol=1e-4)
    with pytest.raises(ValueError, match="heatmap"):
        ct.invert(np.ones((64, 64), np.float32), out)


def test_ct_volume_resample_to_spacing(phantom):
    vol = phantom[0]
    t = ct_volume_transforms(CTVolumeConfig(pixdim=(1.4, 1.4, 2.5)), label_keys=("lesion",))
    d = ct_input_dict(vol, SPACING, (0.0, 0.0, 0.0), GEOMETRIES["feet_first"], labels={"lesion": phantom[2]})
    out = t(d)
    img = out["image"]
    np.testing.assert_allclose(np.linalg.norm(img.affine.numpy()[:3, :3], axis=0), (1.4, 1.4, 2.5), atol=1e-6)
    assert abs(img.shape[1] - 96 * 0.7 / 1.4) <= 1 and img.shape[3] == 40
    assert set(np.unique(out["lesion"].numpy())) <= {0.0, 1.0}
    back = t.inverse({"image": out["image"], "lesion": out["lesion"]})
    assert tuple(back["image"].shape) == (1, 96, 80, 40) and tuple(back["lesion"].shape) == (1, 96, 80, 40)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(fractions=(0.2, 1.2)), "fractions"),
        (dict(fractions=(-0.1, 0.5)), "fractions"),
        (dict(fractions=()), "fractions"),
        (dict(size=2), "size"),
        (dict(crop_to="heart"), "crop_to"),
    ],
)
def test_ct_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CTStackConfig(**kwargs)


def test_ct_bad_inputs():
    ct = CTStackTransform(CTStackConfig(size=32))
    vol = _phantom(shape=(12, 40, 48), lung_z=(2, 10))[0]
    with pytest.raises(ValueError, match="array_zyx"):
        ct(vol[0], SPACING, (0, 0, 0), np.eye(3))
    with pytest.raises(ValueError, match="spacing_xyz"):
        ct(vol, (0.7, 0.7), (0, 0, 0), np.eye(3))
    with pytest.raises(ValueError, match="direction_lps"):
        ct(vol, SPACING, (0, 0, 0), np.eye(3) * 2)
    no_lungs = _phantom(shape=(12, 40, 48), with_lungs=False)[0]
    with pytest.raises(ValueError, match="no lungs found"):
        ct(no_lungs, SPACING, (0, 0, 0), np.eye(3))
    with pytest.raises(ValueError, match="labels"):
        ct(vol, SPACING, (0, 0, 0), np.eye(3), labels={"x": np.zeros_like(vol)})


def test_ct_refuses_non_axial_slices():
    """A sagittal series has no original axial slices; the chain says so instead of interpolating."""
    vol = _phantom(shape=(12, 40, 48), lung_z=(2, 10))[0]
    sagittal = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # index z runs left
    with pytest.raises(ValueError, match="not original slices"):
        CTStackTransform(CTStackConfig(size=32))(vol, SPACING, (0, 0, 0), sagittal)


# ------------------------------------------------------------------------------------------ fundus
@pytest.fixture(scope="module")
def retina():
    from skimage import data

    return data.retina()


@pytest.fixture(scope="module")
def fundus_run(retina):
    h, w = retina.shape[:2]
    yy, xx = np.ogrid[:h, :w]
    lesion = ((yy - 650) ** 2 + (xx - 500) ** 2 <= 150**2).astype(np.uint8)
    ft = FundusTransform(FundusConfig(size=64), label_keys=("lesion",))
    before = retina.copy()
    out = ft(retina, labels={"lesion": lesion})
    np.testing.assert_array_equal(retina, before)
    return ft, out, lesion


def test_fov_of_retina_is_centred_circle(retina):
    fov = detect_fov(retina)
    h, w = retina.shape[:2]
    assert abs(fov.center_row - h / 2) < 0.03 * h and abs(fov.center_col - w / 2) < 0.03 * w
    assert 0.45 * w < fov.radius < 0.52 * w
    assert fov.mask.shape == (h, w) and fov.mask.mean() > 0.7 and not fov.clipped
    # the circle agrees with the bright pixels
    assert _dice(fov.mask, retina.max(axis=-1) > 30) > 0.97


def test_fundus_chain_outputs_and_inverse(fundus_run, retina):
    ft, out, lesion = fundus_run
    img, fov_mask = out["image"], out["fov_mask"]
    assert tuple(img.shape) == (3, 64, 64) and img.dtype == torch.float32
    assert tuple(fov_mask.shape) == (1, 64, 64) and tuple(out["lesion"].shape) == (1, 64, 64)
    assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    assert float(img[:, fov_mask[0] == 0].abs().sum()) == 0.0  # zero outside the FOV
    fov = detect_fov(retina)
    back = ft.invert(fov_mask[0], out)
    assert back.shape == retina.shape[:2]
    assert _dice(back > 0.5, fov.mask) > 0.97
    lesion_back = ft.invert(out["lesion"][0], out)
    assert _dice(lesion_back > 0.5, lesion) > 0.9
    multi = ft.invert(np.ones((2, 64, 64), np.float32), out)
    assert multi.shape == (2, *retina.shape[:2])


def test_fundus_clipped_fov_is_padded(retina):
    full = detect_fov(retina)
    clipped_photo = retina[200:1211]  # FOV cut at top and bottom, as in many fundus cameras
    fov = detect_fov(clipped_photo)
    assert fov.clipped
    assert abs(fov.radius - full.radius) < 0.02 * full.radius
    assert abs(fov.center_row + 200 - full.center_row) < 5 and abs(fov.center_col - full.center_col) < 5
    ft = FundusTransform(FundusConfig(size=64))
    out = ft(clipped_photo)
    assert out["fov_box"][0, 0] < 0 and out["fov_box"][1, 0] > clipped_photo.shape[0]  # padded rows
    img = out["image"].numpy()
    assert float(np.abs(img[:, :4]).sum()) == 0.0 and float(np.abs(img[:, -4:]).sum()) == 0.0
    back = ft.invert(out["fov_mask"][0], out)
    assert back.shape == clipped_photo.shape[:2] and _dice(back > 0.5, fov.mask) > 0.97


def test_fundus_bad_inputs(retina):
    ft = FundusTransform(FundusConfig(size=32))
    with pytest.raises(ValueError, match="shape"):
        ft(retina[..., 0])
    with pytest.raises(ValueError, match="uint8"):
        ft(retina.astype(np.float32) / 255.0)
    with pytest.raises(ValueError, match="no field of view"):
        ft(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="size"):
        FundusConfig(size=0)
