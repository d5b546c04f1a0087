"""Ingest benchmark, two parts.

1. In-process read: a 200-slice 512x512 uncompressed CT series read by medxai, SimpleITK's
   ImageSeriesReader and MONAI's LoadImage, in one process, interleaved, median of several runs.
   Target: medxai at most 0.3x SimpleITK's time with all checks on; peak memory at most twice the
   volume. Peak memory is measured per reader in a fresh subprocess (the kernel's RSS high-water mark
   above the process's RSS after imports) and, for medxai, also with tracemalloc.
2. What the user runs (issue 13): whole-process ``medxai ingest SOURCE -o OUT`` for ``.nrrd`` and
   ``.nii.gz`` against a SimpleITK script doing the same read + compressed float32 write, alternating
   runs, on the phantom CT of ``medxai phantom ct --size benchmark`` and on the 200x512x512 series.
   Target: at most 1.0x SimpleITK for both formats on both volumes. Peak RSS of each process is
   reported too (``wait4``), and the peak of the ingest call above the process's RSS after imports.

    python benchmarks/ingest.py [--slices 200] [--size 512] [--repeats 7] [--process-repeats 5]
                                [--no-monai] [--no-process] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicom_io import StudyInfo, Volume, read_series, write_ct_series


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


def _peak_over_imports(what: str, setup: str, call: str) -> float:
    """MiB of peak RSS that ``call`` adds, in a fresh process, to the RSS after ``setup`` (the imports)."""
    # ru_maxrss survives exec (the child would inherit this process's peak), so reset the kernel's
    # high-water mark through /proc/self/clear_refs and read VmHWM instead.
    code = f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
{setup}
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
open("/proc/self/clear_refs", "w").write("5")
base = status("VmRSS")
{call}
print(status("VmHWM") - base)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"peak-memory run of {what} failed: {out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def peak_rss_subprocess(name: str, folder: Path) -> float:
    """MiB of peak RSS above the baseline after imports, for one read in a fresh process."""
    setup = "import ingest as b\nimport SimpleITK, numpy" + ("\nimport monai.transforms" if name == "monai" else "")
    return _peak_over_imports(name, setup, f"b.READERS[{name!r}](b.Path({str(folder)!r}))")


SITK_INGEST = """
import sys
import SimpleITK as sitk
r = sitk.ImageSeriesReader()
r.SetFileNames(r.GetGDCMSeriesFileNames(sys.argv[1]))
sitk.WriteImage(sitk.Cast(r.Execute(), sitk.sitkFloat32), sys.argv[2], useCompression=True)
"""


def run_process(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one process; ``wait4`` gives this child's own rusage."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed ({proc.returncode}): {err[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def ingest_peak_over_imports(folder: Path, out: Path) -> float:
    """MiB the ingest call (read + write) adds to a fresh process's RSS after its imports."""
    return _peak_over_imports(
        "the ingest call",
        "import SimpleITK, numpy, nibabel\nimport pipelines.ingest as ing",
        f"ing.ingest({str(folder)!r}, {str(out)!r})",
    )


def whole_process(name: str, folder: Path, workdir: Path, repeats: int) -> dict[str, object]:
    """Alternating whole-process runs of medxai ingest and the SimpleITK script, both formats."""
    script = workdir / "sitk_ingest.py"
    script.write_text(SITK_INGEST)
    medxai = [sys.executable, "-m", "pipelines", "ingest", str(folder), "-o"]
    vol = read_series(folder)
    vol_mib = vol.array.nbytes / 2**20
    rows: dict[str, object] = {"volume": name, "shape_zyx": list(vol.shape), "volume_mib": round(vol_mib, 1)}
    for suffix in (".nrrd", ".nii.gz"):
        t: dict[str, list[float]] = {"medxai": [], "simpleitk": []}
        rss: dict[str, float] = {"medxai": 0.0, "simpleitk": 0.0}
        for _ in range(repeats):  # alternating, so drift hits both alike
            for who, cmd in (
                ("medxai", [*medxai, str(workdir / f"m{suffix}")]),
                ("simpleitk", [sys.executable, str(script), str(folder), str(workdir / f"s{suffix}")]),
            ):
                wall, peak = run_process(cmd)
                t[who].append(wall)
                rss[who] = max(rss[who], peak)
        med = {k: statistics.median(v) for k, v in t.items()}
        sizes = {k: (workdir / f"{k[0]}{suffix}").stat().st_size / 2**20 for k in t}
        call_peak = ingest_peak_over_imports(folder, workdir / f"p{suffix}")
        rows[suffix] = {
            "median_s": {k: round(v, 3) for k, v in med.items()},
            "ratio_medxai_over_simpleitk": round(med["medxai"] / med["simpleitk"], 3),
            "process_peak_rss_mib": {k: round(v, 1) for k, v in rss.items()},
            "ingest_call_peak_over_imports_mib": round(call_peak, 1),
            "ingest_call_peak_over_volume": round(call_peak / vol_mib, 3),
            "file_mib": {k: round(v, 1) for k, v in sizes.items()},
        }
        print(
            f"{name:18s} {suffix:7s} medxai {med['medxai']:.2f} s  SimpleITK {med['simpleitk']:.2f} s  "
            f"ratio {med['medxai'] / med['simpleitk']:.2f}x  ingest peak {call_peak:.0f} MiB "
            f"({call_peak / vol_mib:.2f}x volume)  files {sizes['medxai']:.1f} / {sizes['simpleitk']:.1f} MiB"
        )
    return rows


def phantom_series(workdir: Path, size: str = "benchmark") -> Path:
    """The CT of ``medxai phantom ct --size benchmark -n 1 --seed 0`` (the issue's volume)."""
    out = workdir / "phantom"
    subprocess.run(
        [sys.executable, "-m", "pipelines", "phantom", "ct", "--size", size, "-n", "1", "--seed", "0", "-o", str(out)],
        check=True,
        capture_output=True,
    )
    return next(out.glob("*/dicom"))


def print_table(result: dict[str, object]) -> None:
    """The issue's target table with this run's figures."""
    rows = [
        ("in-process read, vs SimpleITK", f"{result['ratio_medxai_over_simpleitk']:.2f}x", "<= 0.3x"),
        ("peak RSS of the read (fresh process)", f"{result['peak_rss_over_volume']['medxai']:.2f}x volume", "<= 2x"),
    ]
    for vol in result["whole_process"]:  # type: ignore[union-attr]
        for suffix in (".nrrd", ".nii.gz"):
            r = vol[suffix]
            rows.append(
                (
                    f"whole-process ingest -> {suffix}, {vol['volume']}",
                    f"{r['ratio_medxai_over_simpleitk']:.2f}x ({r['median_s']['medxai']:.2f} s vs "
                    f"{r['median_s']['simpleitk']:.2f} s)",
                    "<= 1.0x",
                )
            )
            rows.append(
                (
                    f"peak RSS of the ingest call -> {suffix}, {vol['volume']}",
                    f"{r['ingest_call_peak_over_volume']:.2f}x volume",
                    "<= 2x",
                )
            )
    width = max(len(r[0]) for r in rows)
    print(f"\n{'figure':{width}s} | this run | target")
    for name, value, target in rows:
        print(f"{name:{width}s} | {value} | {target}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=200)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--no-monai", action="store_true", help="skip MONAI (its import takes ~4 s)")
    ap.add_argument("--process-repeats", type=int, default=5, help="whole-process runs per tool and format")
    ap.add_argument("--no-process", action="store_true", help="skip the whole-process part")
    ap.add_argument("--phantom-size", default="benchmark", help="phantom preset of the whole-process part")
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
        process = []
        if not args.no_process:
            work = Path(tmp) / "work"
            work.mkdir()
            process.append(
                whole_process(f"phantom {args.phantom_size}", phantom_series(work, args.phantom_size), work, args.process_repeats)
            )
            process.append(whole_process(f"{args.slices}x{args.size}x{args.size}", folder, work, args.process_repeats))

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
        "whole_process": process,
        "targets": {"ratio_max": 0.3, "peak_over_volume_max": 2.0, "whole_process_ratio_max": 1.0},
    }
    for k, v in med.items():
        print(f"{k:10s} median {v:.3f} s  ({v / med['simpleitk']:.2f}x SimpleITK)  peak RSS {rss[k]:.0f} MiB")
    print(
        f"volume {vol_mib:.0f} MiB; medxai tracemalloc peak {peak / 2**20:.0f} MiB "
        f"({result['medxai_tracemalloc_peak_over_volume']:.2f}x volume)"
    )
    print(json.dumps(result, indent=2))
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
