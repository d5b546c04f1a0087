"""Cohort jobs at scale (issue 17): build and explain time per case, memory flat in the cohort size,
kill + resume losing and repeating nothing, two shards equal to one run.

Phantom chest CTs are written as DICOM studies (a few distinct volumes, each study its own patient and
UIDs), then every job runs as ``medxai`` would, in a fresh child process whose peak memory (``VmHWM``)
and wall time are measured:

    python benchmarks/cohort.py [--studies 200] [--small 50] [--explain 20] [--workers 1] [--json OUT.json]

Targets (2 CPU cores): build <= 2 s per study and peak RSS at ``--studies`` <= 1.2x at ``--small``;
explain (DiffExplainer, the config's CPU default) <= 4 s per case, RSS flat the same way; a killed
build / explain resumes with no case lost or done twice and the same results; two shards give exactly
the per-case outputs of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CONFIG = REPO / "configs" / "ct_prognosis.yaml"

# the child: run one job, print {"seconds", "peak_rss_gib", ...} as the last line
_CHILD = r"""
import json, sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
job = json.loads(sys.argv[1])
t0 = time.perf_counter()
if job["kind"] == "build":
    from pipelines.cohort import build_cohort
    res = build_cohort(job["studies"], job["labels"], job["out"], id_column="pid", config=job["config"], workers=job["workers"])
    extra = {{"built": res.built, "skipped": res.skipped, "counts": res.counts()}}
else:
    from pipelines.cohort_explain import explain_cohort
    res = explain_cohort(
        job["cohort"], job["config"], job["out"], method=job["method"], ids=job.get("ids"), split="all", shard=job.get("shard")
    )
    extra = {{"explained": list(res.explained), "skipped": list(res.skipped), "failed": list(res.failed)}}
secs = time.perf_counter() - t0
hwm = next(int(l.split()[1]) for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM:"))
print(json.dumps({{"seconds": secs, "peak_rss_gib": hwm / 2**20, **extra}}))
"""


def _run(job: dict[str, Any], kill_after: float | None = None) -> dict[str, Any] | None:
    """Run ``job`` in a child process; with ``kill_after`` seconds, SIGKILL it then (returns None)."""
    code = _CHILD.format(repo=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(job)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    if kill_after is not None:
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return None
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"job {job['kind']} failed:\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def write_studies(root: Path, n: int, n_small: int, distinct: int = 8, seed: int = 0) -> tuple[Path, Path]:
    """``n`` studies, one folder each, in ``root/studies/all/s<i>``; ``root/studies/small/`` links the
    first ``n_small`` of them (the same layout at both sizes); ``root/labels.csv``. Returns (all, small)."""
    from dicom_io import StudyInfo, Volume, write_ct_series
    from medxai.phantoms import ct_config, make_ct_case

    cases = [make_ct_case(seed + i, ct_config("test")) for i in range(distinct)]
    rows = ["pid,label"]
    every, small = root / "studies" / "all", root / "studies" / "small"
    small.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        c = cases[i % distinct]
        vol = Volume(np.asarray(c.hu, np.float32), c.spacing, c.origin)
        info = StudyInfo(patient_id=f"P{i:04d}", uid_seed=f"cohort-bench-{i}", series_description="chest")
        write_ct_series(vol, every / f"s{i:04d}", info)
        if i < n_small:
            (small / f"s{i:04d}").symlink_to(every / f"s{i:04d}", target_is_directory=True)
        rows.append(f"P{i:04d},{c.label}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return every, small


def _stacks_by_id(cohort: Path) -> dict[str, np.ndarray]:
    from pipelines.cohort import read_cases
    from pipelines.cohort_store import CohortStore

    store = CohortStore.open(cohort)
    return {r["id"]: store.read(int(r["index"]))["image"] for r in read_cases(cohort) if r["status"] == "ok"}


def _heatmaps(out: Path) -> dict[str, np.ndarray]:
    from medxai.explanation import Explanation

    return {p.name: Explanation.load(p).heatmaps_numpy() for p in sorted((out / "cases").iterdir()) if p.is_dir()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=200)
    ap.add_argument("--small", type=int, default=50)
    ap.add_argument("--explain", type=int, default=20, help="cases explained (RSS compared with a quarter of them)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--method", default="diffexplainer")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--build-only", action="store_true", help="measure the build (and its resume) only")
    a = ap.parse_args()
    root = Path(a.workdir or tempfile.mkdtemp(prefix="medxai-cohort-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    fig: dict[str, Any] = {"studies": a.studies, "small": a.small, "workers": a.workers, "cpus": os.cpu_count()}
    t0 = time.perf_counter()
    studies, small_studies = write_studies(root, a.studies, a.small)
    fig["write_studies_seconds"] = round(time.perf_counter() - t0, 1)
    base = {"kind": "build", "labels": str(root / "labels.csv"), "config": str(CONFIG), "workers": a.workers}

    small = _run({**base, "studies": str(small_studies), "out": str(root / "c_small")})
    full = _run({**base, "studies": str(studies), "out": str(root / "c_full")})
    assert small and full
    fig["build"] = {
        "seconds_per_study": full["seconds"] / a.studies,
        "peak_rss_gib_small": small["peak_rss_gib"],
        "peak_rss_gib_full": full["peak_rss_gib"],
        "rss_ratio": full["peak_rss_gib"] / small["peak_rss_gib"],
        "counts": full["counts"],
    }
    print("build", json.dumps(fig["build"]), flush=True)

    # kill the build part-way, resume, compare with the uninterrupted one
    killed = root / "c_killed"
    _run({**base, "studies": str(studies), "out": str(killed)}, kill_after=0.4 * full["seconds"])
    from pipelines.cohort_store import read_done

    done_before = len(read_done(killed))
    resumed = _run({**base, "studies": str(studies), "out": str(killed)})
    assert resumed
    ref, got = _stacks_by_id(root / "c_full"), _stacks_by_id(killed)
    fig["build_resume"] = {
        "done_before_kill": done_before,
        "built_on_resume": resumed["built"],
        "skipped_on_resume": resumed["skipped"],
        "none_lost_none_twice": resumed["built"] + done_before == len(ref) and resumed["skipped"] == done_before,
        "same_stacks": ref.keys() == got.keys() and all(np.array_equal(ref[k], got[k], equal_nan=True) for k in ref),
    }
    print("build_resume", json.dumps(fig["build_resume"]), flush=True)
    if a.build_only:
        _finish(fig, a, root)
        return

    # explain: time per case and memory at a quarter vs all of --explain cases
    from pipelines.cohort import read_cases

    ids = [r["id"] for r in read_cases(root / "c_full") if r["status"] == "ok"][: a.explain]
    quarter = ids[: max(1, len(ids) // 4)]
    ex = {"kind": "explain", "cohort": str(root / "c_full"), "config": str(CONFIG), "method": a.method}
    few = _run({**ex, "ids": quarter, "out": str(root / "e_few")})
    many = _run({**ex, "ids": ids, "out": str(root / "e_all")})
    assert few and many
    per_case = [json.loads(p.read_text())["seconds"] for p in (root / "e_all" / "cases").glob("*/row.json")]
    fig["explain"] = {
        "method": a.method,
        "cases": len(ids),
        "seconds_per_case": many["seconds"] / len(ids),  # the whole job: start-up and model loading included
        "seconds_per_case_explain_only": float(np.mean(per_case)),
        "peak_rss_gib_quarter": few["peak_rss_gib"],
        "peak_rss_gib_all": many["peak_rss_gib"],
        "rss_ratio": many["peak_rss_gib"] / few["peak_rss_gib"],
    }
    print("explain", json.dumps(fig["explain"]), flush=True)

    # kill the explain part-way, resume, compare
    _run({**ex, "ids": ids, "out": str(root / "e_killed")}, kill_after=0.5 * many["seconds"])
    before = len(list((root / "e_killed" / "cases").glob("*/row.json"))) if (root / "e_killed" / "cases").is_dir() else 0
    again = _run({**ex, "ids": ids, "out": str(root / "e_killed")})
    assert again
    ref_h, got_h = _heatmaps(root / "e_all"), _heatmaps(root / "e_killed")
    fig["explain_resume"] = {
        "done_before_kill": before,
        "explained_on_resume": len(again["explained"]),
        "none_lost_none_twice": len(again["explained"]) + before == len(ids) and len(again["skipped"]) == before,
        "same_outputs": ref_h.keys() == got_h.keys() and all(np.array_equal(ref_h[k], got_h[k]) for k in ref_h),
    }
    print("explain_resume", json.dumps(fig["explain_resume"]), flush=True)

    # two shards, run at the same time into one folder, against the one-process run
    sub = ids[: min(6, len(ids))]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _CHILD.format(repo=str(REPO)),
                json.dumps({**ex, "ids": sub, "out": str(root / "e_two"), "shard": f"{i}/2"}),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for p in procs:
        p.communicate()
    one = {k: v for k, v in ref_h.items() if k in {p.name for p in (root / "e_two" / "cases").iterdir()}}
    two = _heatmaps(root / "e_two")
    fig["shards"] = {
        "cases": len(sub),
        "identical_to_one_run": len(two) == len(sub) and all(np.array_equal(one[k], two[k]) for k in two),
    }
    print("shards", json.dumps(fig["shards"]), flush=True)

    _finish(fig, a, root)


def _finish(fig: dict[str, Any], a: argparse.Namespace, root: Path) -> None:
    """Print the table of targets, write --json, remove the work folder unless --workdir was given."""
    b, e = fig["build"], fig.get("explain")
    targets: list[tuple[str, Any, str, bool | None]] = [
        ("build s / study", b["seconds_per_study"], "<= 2.0", b["seconds_per_study"] <= 2.0),
        ("build RSS ratio", b["rss_ratio"], "<= 1.2", b["rss_ratio"] <= 1.2),
        ("build resume", fig["build_resume"]["none_lost_none_twice"] and fig["build_resume"]["same_stacks"], "true", None),
    ]
    if e is not None:
        targets += [
            ("explain s / case", e["seconds_per_case"], "<= 4.0", e["seconds_per_case"] <= 4.0),
            ("explain RSS ratio", e["rss_ratio"], "<= 1.2", e["rss_ratio"] <= 1.2),
            (
                "explain resume",
                fig["explain_resume"]["none_lost_none_twice"] and fig["explain_resume"]["same_outputs"],
                "true",
                None,
            ),
            ("2 shards == 1 run", fig["shards"]["identical_to_one_run"], "true", None),
        ]
    print(f"\n{'figure':<20} {'value':>10}  target   met")
    for name, value, target, met in targets:
        met = bool(value) if met is None else met
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"{name:<20} {shown:>10}  {target:<8} {'yes' if met else 'NO'}")
    if a.json:
        a.json.write_text(json.dumps(fig, indent=2))
    if a.workdir is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
