"""``medxai cohort explain``: every case of a built cohort, resumable, sharded, failures recorded.

A cohort of six patients (phantom CT written as DICOM, 24 slices of 64x64, built once) is explained
with cheap settings of the shipped models; RISE (stochastic, seeded) checks that a case's output does
not depend on the shard it fell in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines.cli import EXIT_BAD_INPUT, main

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "ct_prognosis.yaml"
RISE = {"rise.n_masks": 16, "rise.batch_size": 16}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dicom_io import StudyInfo, Volume, write_ct_series
    from medxai.phantoms import ct_config, make_ct_case
    from pipelines.cohort import build_cohort

    root = tmp_path_factory.mktemp("cohort_explain")
    cases = [make_ct_case(s, ct_config("test", n_slices=24, matrix=64, vessel_points=40)) for s in (3, 4)]
    for i in range(6):
        c = cases[i % 2]
        vol = Volume(np.asarray(c.hu, np.float32), c.spacing, c.origin)
        write_ct_series(
            vol, root / "studies" / f"s{i}", StudyInfo(patient_id=f"P{i}", uid_seed=f"ce-{i}", series_description="chest")
        )
    (root / "labels.csv").write_text("pid,label\n" + "".join(f"P{i},{i % 2}\n" for i in range(6)))
    build_cohort(root / "studies", root / "labels.csv", root / "cohort", id_column="pid", config=CONFIG)
    return root / "cohort"


def _run(cohort: Path, out: Path, *extra: str) -> int:
    return main(["cohort", "explain", str(cohort), "-c", str(CONFIG), "-o", str(out), "--split", "all", *extra])


def _explain(cohort: Path, out: Path, **kw: Any) -> Any:
    from pipelines.cohort_explain import explain_cohort

    return explain_cohort(cohort, CONFIG, out, method="rise", split="all", overrides=RISE, **kw)


def _outputs(out: Path) -> dict[str, np.ndarray]:
    from medxai.explanation import Explanation

    return {p.name: Explanation.load(p).heatmaps_numpy() for p in sorted((out / "cases").iterdir())}


def test_every_case_explained_with_its_identifiers(cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipelines.cohort import read_cases

    assert _run(cohort, tmp_path / "o", "--method", "gradcam") == 0, capsys.readouterr().err
    printed = " ".join(capsys.readouterr().out.split())
    assert "6 case(s) explained with gradcam" in printed
    rows = {r["id"]: r for r in _csv(tmp_path / "o" / "cases.csv")}
    built = {r["id"]: r for r in read_cases(cohort) if r["status"] == "ok"}
    assert set(rows) == set(built) and all(r["status"] == "ok" for r in rows.values())
    for cid, row in rows.items():
        assert row["SeriesInstanceUID"] == built[cid]["SeriesInstanceUID"] and row["label"] == built[cid]["label"]
        meta = json.loads((Path(row["output"]) / "explanation.json").read_text())
        assert meta["provenance"]["PatientID"] == built[cid]["PatientID"] and meta["method"] == "gradcam"
        assert 0 <= float(row["p_query"]) <= 1 and 0 <= float(row["heatmap_share_in_lungs"]) <= 1


def _csv(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_two_shards_give_exactly_one_run(cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    one = _explain(cohort, tmp_path / "one")
    a = _explain(cohort, tmp_path / "two", shard="0/2")
    monkeypatch.setenv("WORLD_SIZE", "2")  # the second half as torchrun's rank 1 would take it
    monkeypatch.setenv("RANK", "1")
    b = _explain(cohort, tmp_path / "two")
    assert len(one.explained) == 6 and len(a.explained) == 3 and len(b.explained) == 3
    assert set(a.explained).isdisjoint(b.explained) and set(a.explained) | set(b.explained) == set(one.explained)
    ref, got = _outputs(tmp_path / "one"), _outputs(tmp_path / "two")
    assert ref.keys() == got.keys() and all(np.array_equal(ref[k], got[k]) for k in ref)
    assert len(_csv(tmp_path / "two" / "cases.csv")) == 6  # the last shard to finish wrote the union


def test_killed_run_resumes_without_losing_or_repeating_a_case(
    cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medxai.explainers.rise import RISE as RiseExplainer

    real = RiseExplainer.explain
    calls: list[int] = []

    def dies_on_the_third(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # a kill: nothing catches it
        return real(self, *args, **kwargs)

    monkeypatch.setattr(RiseExplainer, "explain", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        _explain(cohort, tmp_path / "o")
    done = sorted(p.name for p in (tmp_path / "o" / "cases").iterdir())
    assert len(done) == 2 and not list((tmp_path / "o" / "cases").glob(".*"))  # no half-written folder left
    monkeypatch.setattr(RiseExplainer, "explain", real)
    res = _explain(cohort, tmp_path / "o")
    assert len(res.explained) == 4 and sorted(res.skipped) == sorted(
        json.loads((tmp_path / "o" / "cases" / d / "row.json").read_text())["id"] for d in done
    )
    ref = _explain(cohort, tmp_path / "ref")
    assert all(np.array_equal(a, b) for a, b in zip(_outputs(tmp_path / "o").values(), _outputs(tmp_path / "ref").values()))
    assert len(ref.explained) == 6


def test_a_failed_case_is_recorded_and_retried(cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.cohort_store import CohortStore

    real = CohortStore.read

    def broken(self: Any, index: int) -> Any:
        if index == 0:
            raise OSError("chunk 0 of stacks.zarr/image is damaged")
        return real(self, index)

    monkeypatch.setattr(CohortStore, "read", broken)
    res = _explain(cohort, tmp_path / "o")
    assert len(res.failed) == 1 and len(res.explained) == 5
    rows = {r["id"]: r for r in _csv(tmp_path / "o" / "cases.csv")}
    (bad,) = [r for r in rows.values() if r["status"] == "failed"]
    assert "chunk 0 of stacks.zarr/image is damaged" in bad["reason"] and bad["SeriesInstanceUID"]
    monkeypatch.setattr(CohortStore, "read", real)
    again = _explain(cohort, tmp_path / "o")
    assert again.explained == res.failed and len(again.skipped) == 5
    assert all(r["status"] == "ok" for r in _csv(tmp_path / "o" / "cases.csv"))


def test_counterfactual_columns_and_dicom(cohort: Path, tmp_path: Path) -> None:
    """DiffExplainer (tiny settings): probabilities at every step and the flip in cases.csv; --dicom
    writes the DICOM objects of `medxai explain` into the case folder."""
    from pipelines.cohort import read_cases
    from pipelines.cohort_explain import explain_cohort

    first = next(r["id"] for r in read_cases(cohort) if r["status"] == "ok")
    tiny = {
        "diffexplainer.step_sizes": [0.8],
        "diffexplainer.heatmap_step": 0.8,
        "diffexplainer.encode_steps": 2,
        "diffexplainer.decode_steps": 2,
    }
    explain_cohort(cohort, CONFIG, tmp_path / "o", method="diffexplainer", ids=[first], dicom=True, overrides=tiny)
    (row,) = _csv(tmp_path / "o" / "cases.csv")
    assert {"p_query", "p_reconstruction", "p_step_-0.8", "p_step_+0.8", "flip"} <= set(row) and row["flip"] in ("True", "False")
    case = Path(row["output"])
    assert (case / "dicom" / "PM.dcm").is_file() and list((case / "dicom" / "SC_overlay").glob("*.dcm"))


def test_every_case_explained_then_reported(cohort: Path, tmp_path: Path) -> None:
    """The chain a study runs: cohort explain (DiffExplainer, tiny settings) -> cohort report, from OUT/ alone."""
    from pipelines.cohort_explain import explain_cohort

    tiny = {"diffexplainer.step_sizes": [0.8], "diffexplainer.encode_steps": 2, "diffexplainer.decode_steps": 2}
    explain_cohort(cohort, CONFIG, tmp_path / "o", method="diffexplainer", split="all", overrides=tiny)
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    assert run["method"] == "diffexplainer" and run["stack"]["fractions"] == [0.2, 0.4, 0.6, 0.8]
    assert len(list((tmp_path / "o" / "cases").glob("*/lung_mask.npz"))) == 6
    assert main(["cohort", "report", str(tmp_path / "o"), "-o", str(tmp_path / "r"), "--resamples", "200"]) == 0
    meta = json.loads((tmp_path / "r" / "settings.json").read_text())
    assert len(meta["cases_used"]) == 6 and meta["cases_left_out"] == []
    assert (tmp_path / "r" / "figures" / "population_toward.png").is_file()


def test_bad_inputs_exit_2_naming_the_problem(cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    assert main(["cohort", "explain", str(tmp_path), "-c", str(CONFIG), "-o", str(tmp_path / "o")]) == EXIT_BAD_INPUT
    assert "cohort build" in " ".join(capsys.readouterr().err.split())
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["stack"]["size"] = 32
    for section in ("teacher", "autoencoder", "agent", "nn_explainer_network"):
        if isinstance(cfg.get(section), dict) and "path" in cfg[section]:
            cfg[section]["path"] = str(REPO / "configs" / cfg[section]["path"])
    cfg["autoencoder"]["config"] = str(REPO / "configs" / cfg["autoencoder"]["config"])
    other = tmp_path / "small.yaml"
    other.write_text(yaml.safe_dump(cfg))
    code = main(["cohort", "explain", str(cohort), "-c", str(other), "-o", str(tmp_path / "o2"), "--split", "all"])
    assert code == EXIT_BAD_INPUT and "other stack settings" in " ".join(capsys.readouterr().err.split())
    assert _run(cohort, tmp_path / "o3", "--split", "nosuch") == EXIT_BAD_INPUT
