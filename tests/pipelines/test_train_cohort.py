"""``medxai train ... --data COHORT/``: training on a built cohort's train split, held-out figures on
its validation split, its test split untouched; an npz claims no held-out figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tiny_models import write_npz_ct_config

from pipelines.cli import EXIT_BAD_INPUT, main

N_PATIENTS = 12


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from dicom_io import StudyInfo, Volume, write_ct_series
    from medxai.phantoms import ct_config, make_ct_case
    from pipelines.cohort import build_cohort

    root = tmp_path_factory.mktemp("train_cohort")
    config = write_npz_ct_config(root / "cfg", {"steps": 3, "batch_size": 4, "lr": 1e-3, "seed": 0})
    cases = [make_ct_case(s, ct_config("test", n_slices=16, matrix=48, vessel_points=20)) for s in (3, 4)]
    for i in range(N_PATIENTS):
        c = cases[i % 2]
        vol = Volume(np.asarray(c.hu, np.float32), c.spacing, c.origin)
        write_ct_series(vol, root / "studies" / f"s{i}", StudyInfo(patient_id=f"P{i}", uid_seed=f"tc-{i}"))
    (root / "labels.csv").write_text("pid,label\n" + "".join(f"P{i},{i % 2}\n" for i in range(N_PATIENTS)))
    build_cohort(root / "studies", root / "labels.csv", root / "cohort", id_column="pid", config=config)
    return {"root": root, "config": config, "cohort": root / "cohort"}


def _split_stacks(cohort: Path, split: str) -> np.ndarray:
    from pipelines.cohort import read_cases
    from pipelines.cohort_store import CohortStore

    store = CohortStore.open(cohort)
    rows = [r for r in read_cases(cohort) if r["status"] == "ok" and r["split"] == split]
    return np.stack([store.read(int(r["index"]))["image"] for r in rows])


def test_trains_on_the_train_split_and_holds_out_validation(setup: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from medxai.training import trainers
    from pipelines.commands.train_ct import _run

    seen: dict[str, np.ndarray] = {}
    real = trainers.train_teacher

    def spy(model: Any, x: Any, y: Any, *args: Any, **kwargs: Any) -> Any:
        seen["x"], seen["y"] = x.numpy().copy(), y.numpy().copy()
        return real(model, x, y, *args, **kwargs)

    monkeypatch.setattr(trainers, "train_teacher", spy)
    results = _run(["teacher", "autoencoder", "agent"], setup["config"], setup["cohort"], None)

    train, validation = _split_stacks(setup["cohort"], "train"), _split_stacks(setup["cohort"], "validation")
    assert len(validation) >= 1 and len(_split_stacks(setup["cohort"], "test")) >= 1
    np.testing.assert_array_equal(seen["x"], train)  # exactly the train split, nothing else
    assert sorted(set(seen["y"].tolist())) == [0, 1]
    for part in ("teacher", "agent"):
        assert results[part]["held_out"].startswith("validation split of cohort")
        assert results[part]["held_out_cases"] == len(validation)
    assert 0.0 <= results["agent"]["agreement_test"] <= 1.0
    assert 0.0 <= results["teacher"]["accuracy_held_out"] <= 1.0
    assert results["autoencoder"]["reconstruction_error"]["cases"] == "held-out cases"


def test_an_npz_claims_no_held_out_figure(setup: dict[str, Path]) -> None:
    from pipelines.commands.train_ct import _run

    results = _run(["teacher"], setup["config"], None, None)  # the config's data.npz
    assert results["teacher"]["held_out"] == "an npz has no held-out split"
    assert "accuracy_held_out" not in results["teacher"]


def test_bad_data_folders_exit_2_naming_them(setup: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    plain = setup["root"] / "not_a_cohort"
    plain.mkdir(exist_ok=True)
    assert main(["train", "teacher", "-c", str(setup["config"]), "--data", str(plain)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "not_a_cohort" in err and "not a cohort" in err and "Traceback" not in err

    shipped = Path(__file__).resolve().parents[2] / "configs" / "ct_prognosis.yaml"  # 64-pixel stacks, not 16
    assert main(["train", "teacher", "-c", str(shipped), "--data", str(setup["cohort"])]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "other stack settings" in err and "rebuild the cohort" in err
