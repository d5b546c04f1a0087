"""Ingest benchmark: a 200-slice 512x512 uncompressed CT series read by medxai, SimpleITK's
ImageSeriesReader and MONAI's LoadImage, in one process, interleaved, median of several runs.

Target (issue 2): medxai at most 0.6x SimpleITK's time with all checks on; peak memory at most
twice the volume. Peak memory is measured per reader in a fresh subprocess (the kernel's RSS
high-water mark above the process's RSS after imports) and, for medxai, also with tracemalloc.

    python benchmarks/ingest.py [--slices 200] [--size 512] [--repeats 7] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicom_io import StudyInfo, Volume, read_series, write_ct_series  # noqa: E402


def make_series(folder: Path, slices: int, size: int) -> Volume:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    body = ((xx - size / 2) / (0.45 * size)) ** 2 + ((yy - size / 2) / (0.35 * size)) ** 2 < 1
    base = np.where(body, 40.0, -1000.0).astype(np.float32)
    arr = np.empty((slices, size, size), np.float32)
    for k in range(slices):
        arr[k] = base + rng.normal(0, 20, (size, size)).astype(np.float32)
    vol = Volume(np.rint(arr), (0.7, 0.7, 1.25), (-180.0, -180.0, -250.0))
    # Shuffled file names: no reader may rely on name order.
    names = [f"{i:08x}.dcm" for i in rng.permutation(slices)]
    write_ct_series(vol, folder, StudyInfo(uid_seed="bench"), file_names=names)
    return vol


def read_medxai(folder: Path) -> np.ndarray:
    return read_series(folder).array


def read_sitk(folder: Path) -> np.ndarray:
    """GDCM's file sort + read; timed with the copy to numpy, as medxai also returns a float32 array."""
    import SimpleITK as sitk

    r = sitk.ImageSeriesReader()
    r.SetFileNames(r.GetGDCMSeriesFileNames(str(folder)))
    return sitk.GetArrayFromImage(r.Execute())


def read_monai(folder: Path) -> np.ndarray:
    from monai.transforms import LoadImage

    return np.asarray(LoadImage(reader="PydicomReader", image_only=True)(str(folder)))


READERS = {"medxai": read_medxai, "simpleitk": read_sitk, "monai": read_monai}


def peak_rss_subprocess(name: str, folder: Path) -> float:
    """MiB of peak RSS above the baseline after imports, for one read in a fresh process."""
    # ru_maxrss survives exec (the child would inherit this process's peak), so reset the kernel's
    # high-water mark through /proc/self/clear_refs and read VmHWM instead.
    code = f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
import ingest as b
import SimpleITK, numpy
if {name!r} == "monai":
    import monai.transforms
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
open("/proc/self/clear_refs", "w").write("5")
base = status("VmRSS")
b.READERS[{name!r}](b.Path({str(folder)!r}))
print(status("VmHWM") - base)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"peak-memory run of {name} failed: {out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=200)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--no-monai", action="store_true", help="skip MONAI (its import takes ~4 s)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    readers = {k: v for k, v in READERS.items() if not (args.no_monai and k == "monai")}

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "series"
        t0 = time.perf_counter()
        vol = make_series(folder, args.slices, args.size)
        print(f"wrote {args.slices} slices of {args.size}x{args.size} in {time.perf_counter() - t0:.1f} s")
        vol_mib = vol.array.nbytes / 2**20

        # Correctness first: every reader gives the same voxels (SimpleITK/MONAI may order z differently).
        ref = read_medxai(folder)
        np.testing.assert_array_equal(ref, vol.array)
        for name, fn in readers.items():
            a = np.asarray(fn(folder), dtype=np.float32)
            if a.shape != ref.shape:
                a = np.transpose(a, (2, 1, 0))  # MONAI returns (x, y, z)
            same = np.array_equal(a, ref) or np.array_equal(a[::-1], ref)
            assert same, f"{name} read different voxels"
            print(f"{name:10s} voxels equal to medxai: {same}")

        times: dict[str, list[float]] = {k: [] for k in readers}
        for _ in range(args.repeats):  # interleaved, so drift hits every reader alike
            for name, fn in readers.items():
                t = time.perf_counter()
                fn(folder)
                times[name].append(time.perf_counter() - t)
        med = {k: statistics.median(v) for k, v in times.items()}

        tracemalloc.start()
        read_medxai(folder)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rss = {name: peak_rss_subprocess(name, folder) for name in readers}

    result = {
        "slices": args.slices,
        "size": args.size,
        "repeats": args.repeats,
        "volume_mib": round(vol_mib, 1),
        "median_s": {k: round(v, 4) for k, v in med.items()},
        "ratio_medxai_over_simpleitk": round(med["medxai"] / med["simpleitk"], 3),
        "medxai_tracemalloc_peak_over_volume": round(peak / vol.array.nbytes, 3),
        "peak_rss_mib": {k: round(v, 1) for k, v in rss.items()},
        "peak_rss_over_volume": {k: round(v / vol_mib, 3) for k, v in rss.items()},
        "targets": {"ratio_max": 0.6, "peak_over_volume_max": 2.0},
    }
    for k, v in med.items():
        print(f"{k:10s} median {v:.3f} s  ({v / med['simpleitk']:.2f}x SimpleITK)  peak RSS {rss[k]:.0f} MiB")
    print(f"volume {vol_mib:.0f} MiB; medxai tracemalloc peak {peak / 2**20:.0f} MiB "
          f"({result['medxai_tracemalloc_peak_over_volume']:.2f}x volume)")
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
