"""``medxai cohort build``: CSV checks, the series rule, the split, resume after an interruption, failures.

One small studies folder (phantom CT written as DICOM, 24 slices of 64x64) serves every test:

    s0..s2  P0..P2   one chest series each                      -> ok
    s3      P3       duplicated in the CSV                      -> excluded (its images not built)
    s4      P4       label "2" in the CSV                       -> excluded
    s5      P5       four series: thick, thin full, thin part, scout -> ok, the thin full one
    s6      P6       a slice missing in the middle              -> failed (read error), the rest go on
    s7      P7       no row in the CSV                          -> no_row
    (none)  P404     a row without images                       -> no_images
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dicom_io import StudyInfo, Volume, write_ct_series
from pipelines import cohort as cohort_mod
from pipelines.cli import main
from pipelines.cohort import SelectionRule, build_cohort, read_cases
from pipelines.cohort_labels import assign_splits, read_labels
from pipelines.cohort_series import choose_series, scan_folder
from pipelines.cohort_store import CohortStore, read_done

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "ct_prognosis.yaml"
LABELS = "pid,label,age\nP0,1,70\nP1,0,71\nP2,1,72\nP3,0,1\nP3,1,2\nP4,2,60\n,1,61\nP5,0,65\nP6,1,66\nP404,0,50\n"
BUILT = {"P0", "P1", "P2", "P5"}


def _write(folder: Path, case: object, pid: str, number: int = 1, desc: str = "chest", every: int = 1, **kw: object) -> None:
    hu = np.asarray(case.hu, np.float32)[::every]  # type: ignore[attr-defined]
    sx, sy, sz = case.spacing  # type: ignore[attr-defined]
    vol = Volume(hu, (sx, sy, sz * every), case.origin)  # type: ignore[attr-defined]
    info = StudyInfo(
        patient_id=pid, accession_number=f"A{pid}", uid_seed=f"cohort-{pid}", series_description=desc, series_number=number
    )
    write_ct_series(vol, folder, info, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from medxai.phantoms import ct_config, make_ct_case

    root = tmp_path_factory.mktemp("cohort")
    cfg = ct_config("test", n_slices=24, matrix=64, vessel_points=40)
    cases = [make_ct_case(s, cfg) for s in (3, 4)]
    studies = root / "studies"
    for i in (0, 1, 2, 3, 4, 7):
        _write(studies / f"s{i}" / "ct", cases[i % 2], f"P{i}")
    s5 = studies / "s5"
    _write(s5 / "thick", cases[1], "P5", 1, every=2)  # 12 slices, twice as thick
    _write(s5 / "thin", cases[1], "P5", 2)  # 24 slices: the default rule's choice
    _write(s5 / "part", cases[1], "P5", 3, desc="lung part", slices=range(2, 20))  # as thin, fewer slices
    _write(s5 / "scout", cases[1], "P5", 4, desc="scout", slices=range(3))  # too few slices
    _write(studies / "s6" / "ct", cases[0], "P6", slices=[k for k in range(24) if k != 10])  # a gap
    labels = root / "labels.csv"
    labels.write_text(LABELS)
    return {"root": root, "studies": studies, "labels": labels}


def _args(data: dict[str, Path], out: Path, *extra: str) -> list[str]:
    base = ["cohort", "build", "--studies", str(data["studies"]), "--labels", str(data["labels"]), "-o", str(out)]
    return [*base, "--id-column", "pid", "-c", str(CONFIG), *extra]


@pytest.fixture(scope="module")
def built(data: dict[str, Path]) -> Path:
    """One uninterrupted build through the CLI: the reference for the other tests."""
    out = data["root"] / "ref"
    assert main(_args(data, out)) == 0
    return out


def _by_id(out: Path) -> dict[str, dict[str, str]]:
    return {r["id"]: r for r in read_cases(out) if r["id"]}


def test_cases_csv_lists_every_row_and_series_with_its_reason(built: Path) -> None:
    rows = read_cases(built)
    by_id = _by_id(built)
    assert {i for i, r in by_id.items() if r["status"] == "ok"} == BUILT
    assert [r["status"] for r in rows if r["id"] == "P3"] == ["excluded", "excluded"]
    assert "duplicate ID: lines 5, 6" in by_id["P3"]["reason"] and "its images are not built" in by_id["P3"]["reason"]
    assert by_id["P4"]["status"] == "excluded" and "label '2' on line 7 is not 0 or 1" in by_id["P4"]["reason"]
    (missing,) = [r for r in rows if r["csv_line"] == "8"]
    assert missing["status"] == "excluded" and "missing ID" in missing["reason"]
    assert by_id["P404"]["status"] == "no_images" and "PatientID 'P404'" in by_id["P404"]["reason"]
    assert by_id["P7"]["status"] == "no_row" and by_id["P7"]["SeriesInstanceUID"]
    assert by_id["P6"]["status"] == "failed" and "has a gap" in by_id["P6"]["reason"] and by_id["P6"]["index"] == ""
    for pid in BUILT:
        r = by_id[pid]
        assert r["PatientID"] == pid and r["AccessionNumber"] == f"A{pid}" and r["StudyInstanceUID"] and r["index"]
        assert Path(r["source"]).is_dir() and r["split"] in ("train", "validation", "test")
    assert by_id["P5"]["source"].endswith("thin") and by_id["P5"]["slices"] == "24"
    assert "loses the tie-break" in by_id["P5"]["reason"] and "fewer than 8" in by_id["P5"]["reason"]
    meta = json.loads((built / "cohort.json").read_text())
    assert meta["state"] == "complete" and meta["counts"]["ok"] == 4 and meta["selection"]["min_slices"] == 8
    assert meta["store"]["arrays"]["image"]["shape"] == [4, 4, 64, 64]


def test_store_holds_the_stacks_and_lung_masks(built: Path) -> None:
    store = CohortStore.open(built, "r")
    for r in _by_id(built).values():
        if r["status"] == "ok":
            row = store.read(int(r["index"]))
            assert row["image"].shape == (4, 64, 64) and row["image"].dtype == np.float32
            assert 0 <= row["image"].min() and row["image"].max() <= 1 and row["lung_mask"].any()
            assert (row["slice_indices"] >= 0).all()
    assert len(read_done(built)) == 4


def test_rerun_builds_nothing_keeps_the_split_and_lists_problems(
    data: dict[str, Path], built: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _by_id(built)
    capsys.readouterr()
    assert main(_args(data, built)) == 0
    out = capsys.readouterr().out
    assert "4 case(s) in the store (0 built now, 4 already there)" in out
    assert "failed: P6 (line 10)" in out and "no_images: P404 (line 11)" in out and "no_row: P7:" in out
    assert _by_id(built) == before


def test_series_rule_tie_break_pattern_and_thickness(data: dict[str, Path]) -> None:
    scan = scan_folder(str(data["studies"] / "s5"))
    assert scan.error is None and len(scan.series) == 4
    pick = lambda **kw: choose_series(scan.series, SelectionRule(**kw))[0]  # noqa: E731
    assert Path(pick().source).name == "thin"  # thinnest, then most slices (beats "part")
    assert Path(pick(description="LUNG").source).name == "part"
    thick = pick(thickness_range=(1.5 * pick().thickness, 100.0))
    assert Path(thick.source).name == "thick" and thick.n_slices == 12
    assert pick(modality="MR") is None and pick(min_slices=30) is None
    assert Path(pick(description="scout", min_slices=2).source).name == "scout"


def test_match_by_folder_and_accession(data: dict[str, Path]) -> None:
    scans = [scan_folder(str(p)) for p in sorted(data["studies"].iterdir())]
    labels = data["root"] / "by_folder.csv"
    labels.write_text("folder,label\ns0,1\ns7,0\nnope,1\n")
    table = read_labels(labels, "folder")
    recs = cohort_mod._match(table, assign_splits(table.rows, (0.7, 0.15, 0.15), 0), scans, SelectionRule(), "folder")
    status = {r.id: r.status for r in recs}
    assert status["s0"] == status["s7"] == "pending" and status["nope"] == "no_images" and status["s1"] == "no_row"
    labels.write_text("acc,label\nAP1,1\n")
    table = read_labels(labels, "acc")
    recs = cohort_mod._match(table, {"AP1": "train"}, scans, SelectionRule(), "accession")
    assert [r.series.patient_id for r in recs if r.status == "pending"] == ["P1"]  # type: ignore[union-attr]


def test_split_is_stratified_seeded_and_stable(data: dict[str, Path], built: Path) -> None:
    table = read_labels(data["labels"], "pid")
    expected = assign_splits(table.rows, (0.7, 0.15, 0.15), 0)
    by_id = _by_id(built)
    # every valid row has its split, images or not, failed or not: drawn from the CSV alone
    assert {i: by_id[i]["split"] for i in expected} == expected
    rows = dict(reversed(list(table.rows.items())))
    assert assign_splits(rows, (0.7, 0.15, 0.15), 0) == expected  # row order does not matter
    big = read_labels(_many(data["root"] / "many.csv", 200), "pid").rows
    split = assign_splits(big, (0.7, 0.15, 0.15), 7)
    for label in (0, 1):
        n = [sum(1 for i, s in split.items() if s == name and big[i].label == label) for name in ("train", "validation", "test")]
        assert abs(n[0] - 0.7 * sum(n)) <= 1 and abs(n[2] - 0.15 * sum(n)) <= 1
    assert assign_splits(big, (0.7, 0.15, 0.15), 8) != split
    sub = {k: v for k, v in big.items() if k != "P0"}  # another patient leaving moves few others
    assert sum(split[k] != s for k, s in assign_splits(sub, (0.7, 0.15, 0.15), 7).items()) <= 4


def _many(path: Path, n: int) -> Path:
    path.write_text("pid,label\n" + "".join(f"P{i},{int(i % 3 == 0)}\n" for i in range(n)))
    return path


def test_resume_after_interruption_loses_nothing_and_builds_nothing_twice(
    data: dict[str, Path], built: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = data["root"] / "resumed"
    kw = {"id_column": "pid", "config": CONFIG}
    marks: list[int] = []
    real_mark = cohort_mod.mark_done

    def mark_then_die(cohort: Path, index: int, record: dict[str, object]) -> None:
        if len(marks) == 2:  # the third case's arrays are written, its marker is not: a kill right there
            raise KeyboardInterrupt
        marks.append(index)
        real_mark(cohort, index, record)

    monkeypatch.setattr(cohort_mod, "mark_done", mark_then_die)
    with pytest.raises(KeyboardInterrupt):
        build_cohort(data["studies"], data["labels"], out, **kw)  # type: ignore[arg-type]
    monkeypatch.undo()
    assert sorted(read_done(out)) == marks and not (out / "cases.csv").exists()
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "done").glob("*.json")}

    res = build_cohort(data["studies"], data["labels"], out, workers=2, **kw)  # type: ignore[arg-type]
    assert (res.skipped, res.built, res.counts()["failed"]) == (2, 2, 1)
    assert stamps == {p.name: p.stat().st_mtime_ns for p in (out / "done").glob("*.json") if p.name in stamps}
    _same_cohort(out, built)

    (out / "done" / f"{int(_by_id(out)['P2']['index']):07d}.json").unlink()  # a case lost its marker
    res = build_cohort(data["studies"], data["labels"], out, **kw)  # type: ignore[arg-type]
    assert (res.skipped, res.built) == (3, 1)
    _same_cohort(out, built)


def _same_cohort(out: Path, ref: Path) -> None:
    a, b = _by_id(out), _by_id(ref)
    assert {i: (r["status"], r["split"], r["index"]) for i, r in a.items()} == {
        i: (r["status"], r["split"], r["index"]) for i, r in b.items()
    }
    sa, sb = CohortStore.open(out, "r"), CohortStore.open(ref, "r")
    for r in a.values():
        if r["status"] == "ok":
            x, y = sa.read(int(r["index"])), sb.read(int(r["index"]))
            assert all(np.array_equal(x[k], y[k]) for k in x)


def test_other_stack_settings_refuse_to_mix(data: dict[str, Path], built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["stack"]["window_level"] = -500
    cfg["autoencoder"]["config"] = str(REPO / "configs" / cfg["autoencoder"]["config"])
    other = data["root"] / "other.yaml"
    other.write_text(yaml.safe_dump(cfg))
    assert main([*_args(data, built)[:-2], "-c", str(other)]) == 2
    assert "other stack settings" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "extra", "says"),
    [
        (None, (), "does not exist"),
        ("patient,label\nP0,1\n", (), "has no column 'pid' (--id-column); its columns are: 'patient', 'label'"),
        ("pid,outcome\nP0,1\n", (), "has no column 'label' (--label-column)"),
        (b"pid,label\nP\xe90,1\n", (), "is not UTF-8 text"),
        ("", (), "is empty"),
        ("pid,label\n", (), "has a header but no rows"),
        ("pid,label\nP0,1\n", ("--split", "0.5", "0.5", "0.5"), "--split must be three fractions"),
    ],
)
def test_bad_labels_file_exits_2_naming_it(
    data: dict[str, Path], capsys: pytest.CaptureFixture[str], content: str | bytes | None, extra: tuple[str, ...], says: str
) -> None:
    path = data["root"] / "bad.csv"
    path.unlink(missing_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    args = _args(data, data["root"] / "never", *extra)
    args[args.index("--labels") + 1] = str(path)
    assert main(args) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert says in err and "Traceback" not in err
    assert "--split" in says or str(path) in err
    assert not (data["root"] / "never").exists()
