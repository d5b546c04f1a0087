"""The shipped models: every file `medxai bench --pretrained` relies on is there, lands where the bench's
model cache expects it, and loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.pretrained import BENCH_PARTS, pretrained_dir, pretrained_overrides, seed_models_dir


def test_bench_models_are_seeded_into_the_cache_layout_and_load(tmp_path: Path) -> None:
    from medxai.explainers import load_nn_explainer
    from medxai.training.checkpoint import load_weights

    copied = {Path(p).relative_to(tmp_path).as_posix() for p in seed_models_dir(tmp_path)}
    for part in ("ct/teacher", "ct/autoencoder", "ct/agent", "fundus/ddpm", *BENCH_PARTS):
        assert f"{part}.safetensors" in copied, part
    for part in BENCH_PARTS:
        meta = json.loads((tmp_path / f"{part}.json").read_text())
        assert meta["shipped"]["stored_as"] == "float16"  # made by scripts/make_pretrained.py --bench-models
        if part.startswith("nn_explainer_"):
            net, cfg, _ = load_nn_explainer(tmp_path / Path(part).parent)
            assert cfg.num_classes == 2 and sum(p.numel() for p in net.parameters()) > 0
        else:
            state = load_weights(tmp_path / f"{part}.safetensors")
            assert state and all(v.numel() > 0 for v in state.values())


def test_seeding_keeps_what_the_cache_already_has(tmp_path: Path) -> None:
    dest = tmp_path / "nn_explainer_ct" / "explainer.safetensors"
    dest.parent.mkdir()
    dest.write_bytes(b"a model trained by an earlier run")
    seed_models_dir(tmp_path)
    assert dest.read_bytes() == b"a model trained by an earlier run"


@pytest.mark.parametrize("part", BENCH_PARTS)
def test_every_bench_part_ships(part: str) -> None:
    assert (pretrained_dir() / f"{part}.safetensors").is_file()


@pytest.mark.parametrize("kind, config", [("ct", "ct_prognosis.yaml"), ("fundus", "dr_fundus.yaml")])
def test_overrides_point_every_model_section_at_shipped_weights(kind: str, config: str) -> None:
    from medxai.config import load_config

    over = pretrained_overrides(kind)
    assert all(Path(p).is_absolute() and Path(p).exists() for p in over.values())
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / config).with_overrides(over)
    for key in over:
        section = key.split(".")[0]
        assert cfg.weights(section) == Path(over[key]) and not cfg.resolved_weights[section]["pretrained"]
    with pytest.raises(ValueError, match="kind must be 'ct' or 'fundus'"):
        pretrained_overrides("mri")
