"""medxai.config: paths relative to the config file, the shipped-weights fallback, the schemas of the
shipped configs and the refusal of the old layout."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import yaml

from medxai.config import (
    CT_PROGNOSIS_SCHEMA,
    DR_FUNDUS_SCHEMA,
    Config,
    ConfigError,
    load_config,
    pretrained_dir,
)

REPO = Path(__file__).resolve().parents[2]
CT = REPO / "configs" / "ct_prognosis.yaml"
DR = REPO / "configs" / "dr_fundus.yaml"


def _write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


# ------------------------------------------------------------------------------ relative paths
def test_shipped_config_paths_are_relative_to_the_config_file_from_any_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(CT, CT_PROGNOSIS_SCHEMA)
    assert cfg.path("run_dir") == REPO / "runs" / "ct_prognosis"
    assert cfg.path("teacher.path") == REPO / "runs" / "ct_prognosis" / "teacher.safetensors"
    assert cfg.path("autoencoder.config") == REPO / "configs" / "diffae_cpu64.yaml"
    assert cfg.relative("autoencoder.config") == cfg.path("autoencoder.config")
    dr = load_config(DR, DR_FUNDUS_SCHEMA)
    assert dr.path("diffusion.path") == REPO / "runs" / "dr" / "ddpm.safetensors"
    assert dr.path("train.data.val_path") == REPO / "runs" / "dr" / "fundus64_test.npz"


def test_relative_config_path_from_a_relative_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path / "job" / "cfg.yaml", {"model": {"path": "w/m.safetensors"}, "abs": {"path": str(tmp_path / "a.bin")}})
    monkeypatch.chdir(tmp_path)
    cfg = load_config("job/cfg.yaml")
    assert cfg.path("model.path") == Path("job/w/m.safetensors")  # relative to the cwd only through the source
    assert cfg.path("abs.path") == tmp_path / "a.bin"
    assert cfg.folder == Path("job")


def test_overrides_keep_their_own_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(_write(tmp_path / "c" / "cfg.yaml", {"teacher": {"path": "t.pt", "num_classes": 2}, "run_dir": "r"}))
    monkeypatch.chdir(tmp_path)
    over = cfg.with_overrides({"teacher.path": "mine/t.pt", "run_dir": str(tmp_path / "abs")})
    assert over.path("teacher.path") == Path("mine/t.pt")  # a command-line path is relative to the cwd
    assert over.path("run_dir") == tmp_path / "abs"
    assert over.source == cfg.source and over.get("teacher.num_classes") == 2
    # a whole section set by an override counts as overridden; later overrides keep earlier ones
    sec = cfg.with_overrides({"teacher": {"path": "x.pt"}}).with_overrides({"seed": 1})
    assert sec.path("teacher.path") == Path("x.pt") and sec.overridden == {"teacher", "seed"}
    assert cfg.path("teacher.path") == tmp_path / "c" / "t.pt"  # the original is untouched


def test_data_npz_is_read_relative_to_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medxai.training.ct import load_data

    stacks = np.random.default_rng(0).random((3, 4, 16, 16), dtype=np.float32)
    (tmp_path / "c").mkdir()
    np.savez(tmp_path / "c" / "stacks.npz", stacks=stacks, labels=np.array([0, 1, 0]))
    cfg = Config({"stack": {"size": 16}, "data": {"source": "npz", "npz": "stacks.npz"}}, tmp_path / "c" / "ct.yaml")
    monkeypatch.chdir(tmp_path)
    np.testing.assert_array_equal(load_data(cfg, "train")["stacks"], stacks)
    with pytest.raises(ValueError, match=r"data npz .*nope\.npz.* does not exist"):
        load_data(cfg.with_overrides({"data.npz": "nope.npz"}), "train")


# --------------------------------------------------------------------------------- weights
def _model_cfg(tmp_path: Path, section: dict) -> Config:
    return load_config(_write(tmp_path / "cfg" / "job.yaml", {"teacher": section}))


def test_weights_prefers_the_path_that_exists(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "t.safetensors").write_bytes(b"x")
    cfg = _model_cfg(tmp_path, {"path": "t.safetensors", "pretrained": "ct/teacher.safetensors"})
    with caplog.at_level(logging.WARNING, logger="medxai.config"):
        assert cfg.weights("teacher") == tmp_path / "cfg" / "t.safetensors"
    assert not caplog.records
    assert cfg.resolved_weights == {"teacher": {"path": str(tmp_path / "cfg" / "t.safetensors"), "pretrained": False}}


def test_weights_falls_back_to_the_shipped_model_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = _model_cfg(tmp_path, {"path": "../runs/teacher.safetensors", "pretrained": "ct/teacher.safetensors"})
    shipped = pretrained_dir() / "ct" / "teacher.safetensors"
    with caplog.at_level(logging.WARNING, logger="medxai.config"):
        assert cfg.weights("teacher") == shipped
        assert cfg.weights("teacher") == shipped  # logged once per model
    assert len(caplog.records) == 1
    msg = caplog.records[0].getMessage()
    assert str(tmp_path / "runs" / "teacher.safetensors") in msg and str(shipped) in msg
    assert cfg.resolved_weights["teacher"] == {"path": str(shipped), "pretrained": True}


def test_weights_folder_fallback(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path / "job.yaml", {"nn_explainer_network": {"path": "nn", "pretrained": "nn_explainer_ct"}}))
    (tmp_path / "nn").mkdir()  # an empty folder is no model yet
    assert cfg.weights("nn_explainer_network") == pretrained_dir() / "nn_explainer_ct"


def test_weights_missing_everywhere_names_file_section_paths_and_fix(tmp_path: Path) -> None:
    cfg = _model_cfg(tmp_path, {"path": "../runs/teacher.safetensors", "pretrained": "ct/nothing.safetensors"})
    with pytest.raises(ConfigError) as info:
        cfg.weights("teacher")
    msg = str(info.value)
    assert str(tmp_path / "cfg" / "job.yaml") in msg and "'teacher'" in msg
    assert str(tmp_path / "runs" / "teacher.safetensors") in msg and "nothing.safetensors" in msg
    assert "medxai train teacher -c" in msg and "point teacher.path" in msg
    no_fallback = _model_cfg(tmp_path, {"path": "missing.safetensors"})
    with pytest.raises(ConfigError, match=r"neither teacher\.path .*missing\.safetensors' exists"):
        no_fallback.weights("teacher")
    assert no_fallback.resolved_weights == {}
    with pytest.raises(ConfigError, match="missing section 'agent'"):
        no_fallback.weights("agent")


@pytest.mark.parametrize("bad", ["../ct/teacher.safetensors", "/etc/passwd", 3])
def test_pretrained_must_stay_inside_medxai_pretrained(tmp_path: Path, bad: object) -> None:
    cfg = _model_cfg(tmp_path, {"path": "missing.safetensors", "pretrained": bad})
    with pytest.raises(ConfigError, match=r"teacher\.pretrained' must be a relative path inside medxai/pretrained"):
        cfg.weights("teacher")


def test_every_shipped_model_section_has_shipped_weights() -> None:
    from medxai.registry import MODEL_SECTIONS

    for path, box in ((CT, "teacher"), (DR, "classifier")):
        cfg = load_config(path)
        sections = [box] + [s for s in MODEL_SECTIONS.values() if cfg.has(s)]
        assert len(sections) >= 3
        for section in sections:
            shipped = pretrained_dir() / cfg.get(f"{section}.pretrained")
            assert shipped.exists(), (path.name, section)


# ------------------------------------------------------------------------------- schemas, layout
def test_shipped_configs_follow_the_conventions() -> None:
    ct = load_config(CT, CT_PROGNOSIS_SCHEMA)
    dr = load_config(DR, DR_FUNDUS_SCHEMA)
    assert (ct.get("input"), ct.get("method"), ct.get("target_class")) == ("ct_stack", "diffexplainer", 1)
    assert (dr.get("input"), dr.get("method"), dr.get("target_class")) == ("fundus", "dvce", 0)
    assert not ct.has("explainer") and not ct.has("type") and not dr.has("dvce.target_class")


@pytest.mark.parametrize(
    "data, match",
    [
        (
            {"type": "diffexplainer_ct"},
            r"'type: diffexplainer_ct' is no longer read; write 'input: ct_stack' and 'method: diffexplainer'",
        ),
        ({"type": "dvce_fundus"}, r"write 'input: fundus' and 'method: dvce'"),
        ({"explainer": {"target_class": 1}}, r"section 'explainer' was renamed 'diffexplainer'"),
        ({"dvce": {"target_class": 0, "num_steps": 3}}, r"'dvce\.target_class' moved to the top level; write 'target_class: 0'"),
        ({"diffexplainer": {"target_class": 1}}, r"'diffexplainer\.target_class' moved to the top level"),
    ],
)
def test_the_old_layout_is_refused_with_the_fix(tmp_path: Path, data: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(_write(tmp_path / "old.yaml", data))


def test_schema_errors_name_the_file_and_field(tmp_path: Path) -> None:
    base = yaml.safe_load(DR.read_text())
    base["target_class"] = "healthy"
    with pytest.raises(ConfigError, match=r"bad\.yaml: field 'target_class' must be int, got str 'healthy'"):
        load_config(_write(tmp_path / "bad.yaml", base), DR_FUNDUS_SCHEMA)
    del base["target_class"]
    with pytest.raises(ConfigError, match=r"bad\.yaml: missing field 'target_class'"):
        load_config(_write(tmp_path / "bad.yaml", base), DR_FUNDUS_SCHEMA)


@pytest.mark.parametrize(
    "key, new",
    [
        ("explainer.encode_steps", "'diffexplainer.encode_steps'"),
        ("explainer.target_class", "'target_class'"),
        ("dvce.target_class", "'target_class'"),
        ("type", "'input / method'"),
    ],
)
def test_overrides_in_the_old_layout_are_refused(key: str, new: str) -> None:
    with pytest.raises(ConfigError, match=rf"x\.yaml: override '{key}' names the old config layout; use {new} instead"):
        Config({}, "x.yaml").with_overrides({key: 4})


def test_ct_data_label_is_checked_at_load(tmp_path: Path) -> None:
    from medxai.training.ct import load_ct_config

    base = yaml.safe_load(CT.read_text())
    base["autoencoder"]["config"] = str(REPO / "configs" / base["autoencoder"]["config"])
    base["data"]["label"] = "fibrosis"
    with pytest.raises(ConfigError, match=r"bad\.yaml: data\.label must be one of outcome, emphysema, got 'fibrosis'"):
        load_ct_config(_write(tmp_path / "bad.yaml", base))
    base["data"]["label"] = "emphysema"
    assert load_ct_config(_write(tmp_path / "ok.yaml", base)).get("data.label") == "emphysema"
