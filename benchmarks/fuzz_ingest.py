"""Mutation fuzzing of ``medxai ingest``, longer than the test suite's run (issue 12).

The same seeded cases and checks as ``tests/dicom_io/test_fuzz_ingest.py`` (they share
``tests/dicom_io/fuzzing.py``): real DICOM files from pydicom / pydicom-data and a phantom CT series,
each with one file mutated (flipped bytes, truncation, changed VR, changed element length, swapped
tags, duplicated / removed element, garbage pixel-data length), run through the CLI in process. An
input passes when it ends in exit 0 with a volume equal to pydicom's decode (every slice kept), or in
exit 2 with one paragraph; anything else is counted as a failure by kind.

    python benchmarks/fuzz_ingest.py --n 3000 --seed 0 [--time-limit 10] [--keep failures/] [--json out.json]

Exits 1 when any input failed (so CI can run it), 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "dicom_io")]

from fuzzing import MUTATORS, make_cases, run_case, seed_inputs  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=3000, help="number of mutated inputs")
    ap.add_argument("--seed", type=int, default=0, help="seed of the case generator")
    ap.add_argument("--time-limit", type=float, default=10.0, help="seconds one input may take")
    ap.add_argument("--keep", type=Path, default=None, help="folder to copy failing inputs into")
    ap.add_argument("--json", type=Path, default=None, help="write the counts and failures here")
    args = ap.parse_args()

    # Damaged headers make pydicom warn and log on nearly every input; the verdicts are what count.
    warnings.simplefilter("ignore")
    logging.basicConfig(level=logging.CRITICAL)
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="medxai-fuzz-") as tmp:
        work = Path(tmp)
        cases = make_cases(seed_inputs(work / "seeds"), args.n, args.seed)
        verdicts: Counter[str] = Counter()
        by_mutator: dict[str, Counter[str]] = {m: Counter() for m in MUTATORS}
        failures: list[dict[str, object]] = []
        slowest = (0.0, "")
        for i, case in enumerate(cases):
            o = run_case(case, work / "cases", args.time_limit)
            verdict = o.failure or ("accepted" if o.exit_code == 0 else "rejected (exit 2)")
            verdicts[verdict] += 1
            by_mutator[case.mutator][verdict] += 1
            if o.seconds > slowest[0]:
                slowest = (o.seconds, case.label())
            if o.failure:
                failures.append({"case": case.label(), "failure": o.failure, "detail": o.detail[:500]})
                if args.keep is not None:
                    dest = args.keep / f"case{case.index:05d}-{o.failure}"
                    dest.mkdir(parents=True, exist_ok=True)
                    for name, data in case.files:
                        (dest / name).write_bytes(data)
            if (i + 1) % 500 == 0:
                print(f"  {i + 1}/{len(cases)} inputs, {len(failures)} failure(s)", file=sys.stderr, flush=True)
    wall = time.perf_counter() - t0

    accepted = verdicts["accepted"]
    rejected = verdicts["rejected (exit 2)"]
    kinds = Counter(str(f["failure"]) for f in failures)
    print(f"inputs: {len(cases)} (seed {args.seed}), {wall:.1f} s")
    print(f"accepted (equal to pydicom's decode): {accepted}")
    print(f"rejected with exit 2: {rejected}")
    print(f"failures: {len(failures)}" + (f" {dict(kinds)}" if kinds else ""))
    print(f"max time per input: {slowest[0]:.3f} s ({slowest[1][:120]})")
    print("by mutator (accepted / rejected / failed):")
    for m, c in by_mutator.items():
        failed = sum(v for k, v in c.items() if k not in ("accepted", "rejected (exit 2)"))
        print(f"  {m:18s} {c['accepted']:5d} {c['rejected (exit 2)']:5d} {failed:5d}")
    for f in failures[:20]:
        print(f"FAILED {f['case']}: {f['failure']} {f['detail']}")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "n": len(cases),
                    "seed": args.seed,
                    "seconds": wall,
                    "accepted": accepted,
                    "rejected": rejected,
                    "failures_by_kind": dict(kinds),
                    "max_seconds_per_input": slowest[0],
                    "failures": failures,
                    "by_mutator": {m: dict(c) for m, c in by_mutator.items()},
                },
                indent=1,
            )
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
