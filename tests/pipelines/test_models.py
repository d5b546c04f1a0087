"""pipelines.models: the black box and every method's extra models from the shipped configs, on the
shipped weights (medxai/pretrained), and the errors that say what to fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from medxai.config import CT_PROGNOSIS_SCHEMA, DR_FUNDUS_SCHEMA, Config, ConfigError, load_config, pretrained_dir
from medxai.registry import CT_STACK, FUNDUS, get_method
from pipelines.models import input_kind, load_black_box, load_method_models, method_settings, target_class

REPO = Path(__file__).resolve().parents[2]


def _fresh(tmp_path: Path, name: str, edit: Any = None) -> Path:
    """The shipped config copied into an empty folder: no runs/ beside it, so every model falls back
    to the shipped weights (as in a fresh clone)."""
    data = yaml.safe_load((REPO / "configs" / name).read_text())
    if "autoencoder" in data:
        data["autoencoder"]["config"] = str(REPO / "configs" / data["autoencoder"]["config"])
    if edit is not None:
        edit(data)
    path = tmp_path / "configs" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def ct_cfg(tmp_path_factory: pytest.TempPathFactory) -> Config:
    return load_config(_fresh(tmp_path_factory.mktemp("ct"), "ct_prognosis.yaml"), CT_PROGNOSIS_SCHEMA)


@pytest.fixture(scope="module")
def dr_cfg(tmp_path_factory: pytest.TempPathFactory) -> Config:
    return load_config(_fresh(tmp_path_factory.mktemp("dr"), "dr_fundus.yaml"), DR_FUNDUS_SCHEMA)


def test_ct_black_box_is_the_shipped_teacher(ct_cfg: Config) -> None:
    teacher = load_black_box(ct_cfg)
    assert type(teacher).__name__ == "DenseNet121" and not teacher.training
    with torch.no_grad():
        assert teacher(torch.rand(2, 4, 64, 64)).shape == (2, 2)
    assert ct_cfg.resolved_weights["teacher"] == {
        "path": str(pretrained_dir() / "ct" / "teacher.safetensors"),
        "pretrained": True,
        # what the load found: the provenance of every explanation (docs/byo_classifier.md)
        "kind": "class_path",
        "input_shape": [4, 64, 64],
        "num_classes": 2,
        "mode": "features",
    }


def test_diffexplainer_models_build_the_method(ct_cfg: Config) -> None:
    spec = get_method("diffexplainer", CT_STACK)
    models = load_method_models(ct_cfg, spec)
    assert set(models) == {"autoencoder", "agent"}
    assert type(models["autoencoder"]).__name__ == "DiffusionAutoencoder" and not models["autoencoder"].training
    assert type(models["agent"]).__name__ == "Agent" and not models["agent"].training
    assert {"autoencoder", "agent"} <= set(ct_cfg.resolved_weights)
    assert ct_cfg.resolved_weights["agent"]["mode"] == "features"  # distilled on the teacher's features, frozen head
    settings = method_settings(ct_cfg, spec)
    assert settings.step_sizes == (0.4, 0.8, 1.2, 1.6) and settings.encode_steps == 20
    explainer = spec.build(load_black_box(ct_cfg), settings, models, seed=0)
    assert explainer.autoencoder is models["autoencoder"] and explainer.agent is models["agent"]


@pytest.mark.parametrize(
    "name, kind, channels, folder",
    [
        ("ct_prognosis.yaml", CT_STACK, 4, "nn_explainer_ct"),
        ("dr_fundus.yaml", FUNDUS, 3, "nn_explainer_fundus"),
    ],
)
def test_nn_explainer_network_is_loaded_as_network_and_config(
    request: pytest.FixtureRequest, name: str, kind: str, channels: int, folder: str
) -> None:
    cfg = request.getfixturevalue("ct_cfg" if kind == CT_STACK else "dr_cfg")
    spec = get_method("nn_explainer", kind)
    models = load_method_models(cfg, spec)
    net, config = models["nn_explainer"]
    assert not net.training and config.in_channels == channels and config.num_classes == 2
    assert cfg.resolved_weights["nn_explainer_network"]["path"] == str(pretrained_dir() / folder)
    exp = spec.build(load_black_box(cfg), method_settings(cfg, spec), models).explain(
        torch.rand(1, channels, 64, 64), target_class(cfg)
    )
    assert exp.heatmaps.shape[-2:] == (64, 64) and torch.isfinite(exp.heatmaps).all()


def test_fundus_black_box_and_dvce_models(dr_cfg: Config) -> None:
    classifier = load_black_box(dr_cfg)
    assert type(classifier).__name__ == "DRClassifier" and not classifier.training
    spec = get_method("dvce", FUNDUS)
    models = load_method_models(dr_cfg, spec)
    assert set(models) == {"diffusion", "robust_model"}
    assert type(models["diffusion"]).__name__ == "ImageDDPM" and models["diffusion"].config.image_size == 64
    assert type(models["robust_model"]).__name__ == "DRClassifier" and models["robust_model"] is not classifier
    assert dr_cfg.resolved_weights["robust_classifier"]["path"] == str(
        pretrained_dir() / "fundus" / "robust_classifier.safetensors"
    )
    settings = method_settings(dr_cfg, spec)
    assert settings.num_steps == 100 and settings.guidance.mode == "cone"
    assert target_class(dr_cfg) == 0 and input_kind(dr_cfg) == FUNDUS


def test_optional_models_are_skipped_when_their_section_is_absent(tmp_path: Path) -> None:
    cfg = load_config(_fresh(tmp_path, "dr_fundus.yaml", lambda d: d.pop("robust_classifier")), DR_FUNDUS_SCHEMA)
    assert set(load_method_models(cfg, get_method("dvce", FUNDUS))) == {"diffusion"}
    assert load_method_models(cfg, get_method("gradcam", FUNDUS)) == {}


def test_progress_is_called_per_model(ct_cfg: Config) -> None:
    calls: list[tuple[str, int, int]] = []
    load_method_models(ct_cfg, get_method("diffexplainer", CT_STACK), progress=lambda *a: calls.append(a))
    assert calls == [("load autoencoder", 1, 2), ("load agent", 2, 2)]


@pytest.mark.parametrize(
    "name, method, section",
    [
        ("ct_prognosis.yaml", "diffexplainer", "agent"),
        ("ct_prognosis.yaml", "nn_explainer", "nn_explainer_network"),
        ("dr_fundus.yaml", "dvce", "diffusion"),
    ],
)
def test_a_missing_needed_section_names_the_file_method_and_section(tmp_path: Path, name: str, method: str, section: str) -> None:
    path = _fresh(tmp_path, name, lambda d: d.pop(section))
    cfg = load_config(path)
    with pytest.raises(ConfigError) as info:
        load_method_models(cfg, get_method(method, input_kind(cfg)))
    msg = str(info.value)
    assert str(path) in msg and f"method {method!r}" in msg and f"no section '{section}'" in msg and f"{section}:" in msg


def test_missing_weights_without_fallback_name_the_fix(tmp_path: Path) -> None:
    cfg = load_config(_fresh(tmp_path, "ct_prognosis.yaml", lambda d: d["agent"].pop("pretrained")))
    with pytest.raises(ConfigError, match=r"weights of section 'agent' are missing.*medxai train agent -c"):
        load_method_models(cfg, get_method("diffexplainer", CT_STACK))


def test_own_black_box_beside_shipped_models_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import shutil

    path = _fresh(tmp_path, "ct_prognosis.yaml")
    own = tmp_path / "runs" / "ct_prognosis" / "teacher.safetensors"
    own.parent.mkdir(parents=True)
    shutil.copy(pretrained_dir() / "ct" / "teacher.safetensors", own)
    cfg = load_config(path)
    load_black_box(cfg)
    assert {k: cfg.resolved_weights["teacher"][k] for k in ("path", "pretrained")} == {"path": str(own), "pretrained": False}
    with caplog.at_level("WARNING", logger="pipelines.models"):
        load_method_models(cfg, get_method("nn_explainer", CT_STACK))
    assert "nn_explainer_network are the shipped ones" in caplog.text


def test_untrusted_class_path_is_refused_and_trust_code_must_be_boolean(tmp_path: Path) -> None:
    def evil(d: dict) -> None:
        d["classifier"]["class_path"] = "collections:OrderedDict"

    cfg = load_config(_fresh(tmp_path, "dr_fundus.yaml", evil))
    with pytest.raises(ValueError, match=r"classifier\.class_path 'collections:OrderedDict' was not loaded.*--trust-code"):
        load_black_box(cfg)
    with pytest.raises(ValueError, match="trust_code' must be true or false"):
        load_black_box(cfg.with_overrides({"trust_code": "yes"}))


def test_black_box_in_channels_must_fit_the_input(tmp_path: Path) -> None:
    cfg = load_config(_fresh(tmp_path, "dr_fundus.yaml", lambda d: d["classifier"].update(in_channels=4)))
    with pytest.raises(ConfigError, match=r"classifier\.in_channels is 4 but the fundus inputs have 3 channels"):
        load_black_box(cfg)


@pytest.mark.parametrize(
    "data, match",
    [
        ({}, r"x\.yaml: missing field 'input'; add 'input: ct_stack'"),
        ({"input": "tensor"}, r"field 'input' is 'tensor'; valid values: ct_stack, fundus"),
        ({"input": "ct"}, r"valid values: ct_stack, fundus"),
        ({"type": "dvce_fundus"}, r"'type: dvce_fundus' is no longer read; write 'input: fundus' and 'method: dvce'"),
    ],
)
def test_input_kind_errors(data: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        input_kind(Config(data, "x.yaml"))


@pytest.mark.parametrize(
    "data, match",
    [
        ({}, r"x\.yaml: missing field 'target_class'; add e\.g\. 'target_class: 1' at the top level"),
        ({"dvce": {"target_class": 0}}, r"missing field 'target_class' \(it moved out of 'dvce'\)"),
        ({"target_class": -1}, r"'target_class' must be a class index >= 0, got -1"),
        ({"target_class": True}, r"got True"),
        ({"target_class": "1"}, r"got '1'"),
    ],
)
def test_target_class_errors(data: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        target_class(Config(data, "x.yaml"))


def test_method_settings_defaults_and_unknown_fields() -> None:
    spec = get_method("rise", CT_STACK)
    assert method_settings(Config({}, "x.yaml"), spec) == spec.settings()
    with pytest.raises(ConfigError, match=r"x\.yaml: section 'rise' is invalid: unknown rise field\(s\) \['n_maskz'\]"):
        method_settings(Config({"rise": {"n_maskz": 3}}, "x.yaml"), spec)
