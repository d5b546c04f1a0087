"""Nothing runs that the user did not choose to trust (issue 12 item 11).

Without ``trust_code`` only allow-listed model classes (torch.nn.Module subclasses from torch /
torch.nn, monai.networks, medxai) are imported and no MONAI bundle expression is evaluated; weights
never unpickle. Every test that could run code checks a marker file in ``tmp_path``.
"""

from __future__ import annotations

import json
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from medxai.config import Config, load_config
from medxai.networks.classifiers import TinyCNN, load_class, load_classifier
from medxai.networks.teacher import TeacherSpec, load_teacher
from medxai.training.checkpoint import load_weights, save_weights
from medxai.trust import is_allowed_module, trusts_code

REPO = Path(__file__).resolve().parents[3]


def _tiny_state(in_channels: int = 4) -> dict[str, torch.Tensor]:
    return TinyCNN(in_channels, 2, width=4, generator=torch.Generator().manual_seed(0)).state_dict()


def _bundle(
    root: Path, network_def: dict[str, Any], extra: dict[str, Any] | None = None, state: dict[str, torch.Tensor] | None = None
) -> Path:
    """A MONAI bundle folder: configs/inference.json and models/model.pt (a plain state dict)."""
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    config = {"num_classes": 2, "channels": 4, "network_def": network_def, **(extra or {})}
    (root / "configs" / "inference.json").write_text(json.dumps(config))
    torch.save(_tiny_state() if state is None else state, root / "models" / "model.pt")
    return root


def _tiny_def(**override: Any) -> dict[str, Any]:
    return {
        "_target_": "medxai.networks.classifiers.TinyCNN",
        "in_channels": "@channels",
        "num_classes": "@num_classes",
        "width": 4,
        **override,
    }


def _bundle_spec(folder: Path) -> TeacherSpec:
    return TeacherSpec(kind="monai_bundle", path=str(folder), num_classes=2, in_channels=4, image_size=16)


# ------------------------------------------------------------------------------------ allow-list
@pytest.mark.parametrize(
    "name, allowed",
    [
        ("torch", True),
        ("torch.nn", True),
        ("torch.nn.modules.linear", True),
        ("monai.networks.nets", True),
        ("medxai", True),
        ("medxai.networks.dr", True),
        ("torch_evil", False),
        ("torch.nnx", False),
        ("torch.utils.data", False),
        ("monai.networksx", False),
        ("monai.bundle", False),
        ("medxai_evil", False),
        ("medxai..x", False),
        ("medxai/../x", False),
        ("subprocess", False),
        ("", False),
    ],
)
def test_is_allowed_module_matches_whole_package_names(name: str, allowed: bool) -> None:
    assert is_allowed_module(name) is allowed


@pytest.mark.parametrize(
    "class_path",
    [
        "monai.networks.nets:DenseNet121",
        "monai.networks.nets.DenseNet121",
        "medxai.networks.classifiers:TinyCNN",
        "medxai.networks.dr:DRClassifier",
        "torch.nn:Linear",
    ],
)
def test_allow_listed_classes_load_without_trust(class_path: str) -> None:
    cls = load_class(class_path)
    assert isinstance(cls, type) and issubclass(cls, nn.Module)


def test_shipped_configs_and_pretrained_models_need_no_trust() -> None:
    """Every class_path in configs/*.yaml and medxai/pretrained/*.json is on the allow-list."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "class_path" and isinstance(v, str):
                    found.append(v)
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for f in sorted((REPO / "configs").glob("*.yaml")):
        data = yaml.safe_load(f.read_text())
        walk(data)
        assert trusts_code(data) is False, f"{f} must not need trust_code"
    for f in sorted((REPO / "medxai" / "pretrained").rglob("*.json")):
        walk(json.loads(f.read_text()))
    assert "monai.networks.nets:DenseNet121" in found and "medxai.networks.dr:DRClassifier" in found
    for class_path in found:
        assert issubclass(load_class(class_path), nn.Module)


def test_shipped_ct_teacher_loads_without_trust() -> None:
    """configs/ct_prognosis.yaml's DenseNet121 teacher with the shipped weights: no --trust-code needed."""
    from medxai.training.ct import load_ct_config, load_teacher_from_config

    cfg = load_ct_config(REPO / "configs" / "ct_prognosis.yaml").with_overrides(
        {"teacher.path": str(REPO / "medxai" / "pretrained" / "ct" / "teacher.safetensors")}
    )
    teacher = load_teacher_from_config(cfg)
    assert type(teacher).__name__ == "DenseNet121" and not teacher.training


@pytest.mark.parametrize(
    "class_path, reason",
    [
        ("subprocess:Popen", "module 'subprocess' is not on the allow-list"),
        ("os.system", "module 'os' is not on the allow-list"),
        ("torch:load", "not a torch.nn.Module subclass"),
        ("monai.networks.nets:resnet18", "not a torch.nn.Module subclass"),  # a factory function
        ("torch.nn:functional", "not a torch.nn.Module subclass"),  # a module
        ("medxai.networks.classifiers:OrderedDict", "not a torch.nn.Module subclass"),
    ],
)
def test_refused_class_paths_name_the_key_and_the_fix(class_path: str, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        load_class(class_path, where="cfg.yaml: teacher.class_path")
    msg = str(info.value)
    assert msg.startswith(f"cfg.yaml: teacher.class_path {class_path!r}")
    assert reason in msg and "--trust-code" in msg and "\n" not in msg


@pytest.mark.parametrize("class_path", ["medxai..networks:TinyCNN", "medxai/../x:Y", "torch.nn:Linear()", ":X"])
def test_malformed_class_paths_are_refused(class_path: str) -> None:
    with pytest.raises(ValueError, match="not of the form 'package.module:ClassName'"):
        load_class(class_path, trust_code=True)


@pytest.fixture(autouse=True)
def _forget_test_modules() -> Iterator[None]:
    """Modules written by a test live in its tmp_path: never let a later test reuse the cached import."""
    yield
    for name in ("torch_evil", "mymodels"):
        sys.modules.pop(name, None)


def test_module_is_not_imported_without_trust(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check is on the module name before import: importing 'torch_evil' would already run its code."""
    marker = tmp_path / "IMPORTED"
    (tmp_path / "torch_evil.py").write_text(
        f"import pathlib\nimport torch\npathlib.Path({str(marker)!r}).touch()\nclass Net(torch.nn.Module):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="torch_evil.*--trust-code"):
        load_class("torch_evil:Net")
    assert not marker.exists()
    # the user's explicit trust imports it
    assert load_class("torch_evil:Net", trust_code=True).__name__ == "Net"
    assert marker.exists()


class _Elsewhere(nn.Module):
    """An nn.Module defined outside the allow-list (in this test module)."""


def test_reexport_in_an_allowed_module_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import medxai.networks.classifiers as classifiers

    monkeypatch.setattr(classifiers, "Smuggled", _Elsewhere, raising=False)
    with pytest.raises(ValueError, match="defined in .*not on the allow-list"):
        load_class("medxai.networks.classifiers:Smuggled")
    assert load_class("medxai.networks.classifiers:Smuggled", trust_code=True) is _Elsewhere


# ---------------------------------------------------------------------------------- class_path teacher
def test_popen_teacher_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    weights = tmp_path / "w.safetensors"
    save_weights(weights, _tiny_state())
    spec = TeacherSpec(
        kind="class_path",
        path=str(weights),
        num_classes=2,
        class_path="subprocess:Popen",
        init_kwargs={"args": ["touch", str(marker)]},
    )
    with pytest.raises(ValueError) as info:
        load_teacher(spec, source="ct.yaml")
    msg = str(info.value)
    assert "ct.yaml: teacher.class_path 'subprocess:Popen'" in msg and "--trust-code" in msg
    assert not marker.exists()


def test_trust_code_in_the_config_counts(tmp_path: Path) -> None:
    from medxai.training.ct import load_ct_config, new_teacher

    base = yaml.safe_load((REPO / "configs" / "ct_prognosis.yaml").read_text())
    base["teacher"]["class_path"] = "collections:OrderedDict"
    base["autoencoder"]["config"] = str(REPO / "configs" / Path(base["autoencoder"]["config"]).name)
    (tmp_path / "ct.yaml").write_text(yaml.safe_dump(base))
    cfg = load_ct_config(tmp_path / "ct.yaml")
    with pytest.raises(ValueError, match=r"ct\.yaml: teacher\.class_path 'collections:OrderedDict' was not loaded"):
        new_teacher(cfg)
    assert trusts_code(cfg.with_overrides({"trust_code": True})) is True
    with pytest.raises(ValueError, match="trust_code' must be true or false"):
        trusts_code(Config({"trust_code": "yes"}, "x.yaml"))
    assert trusts_code(Config({}, "x.yaml"), trust_code=True) is True


# ------------------------------------------------------------------------------------- MONAI bundles
def test_bundle_expression_refused_without_trust(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    expr = f"$__import__('os').system('touch {marker}') or 4"
    folder = _bundle(tmp_path / "bundle", _tiny_def(in_channels=expr))
    with pytest.raises(ValueError) as info:
        load_teacher(_bundle_spec(folder), source="ct.yaml")
    msg = str(info.value)
    assert "ct.yaml: teacher.path" in msg and "inference.json" in msg and "network_def.in_channels" in msg
    assert "Python expression" in msg and "--trust-code" in msg and "\n" not in msg
    assert not marker.exists()


def test_bundle_expression_elsewhere_in_the_config_refused(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    folder = _bundle(tmp_path / "bundle", _tiny_def(), extra={"device": f"$__import__('os').system('touch {marker}')"})
    with pytest.raises(ValueError, match=r"under key 'device'.*--trust-code"):
        load_teacher(_bundle_spec(folder))
    assert not marker.exists()


def test_bundle_expression_runs_with_trust(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    expr = f"$__import__('pathlib').Path({str(marker)!r}).touch() or 4"
    folder = _bundle(tmp_path / "bundle", _tiny_def(in_channels=expr))
    model = load_teacher(_bundle_spec(folder), trust_code=True)
    assert marker.exists()
    assert isinstance(model, TinyCNN) and model.in_channels == 4


@pytest.mark.parametrize(
    "bad, where",
    [
        ({"network_def": _tiny_def(_target_="subprocess.Popen")}, "network_def._target_"),
        ({"handlers": [{"_target_": "Compose"}]}, "handlers[0]._target_"),  # a MONAI short name outside monai.networks.nets
        ({"include": "%other.json#net"}, "another file"),
        ({"network_def": _tiny_def(_mode_="debug")}, "_mode_"),
    ],
)
def test_bundle_code_outside_the_allow_list_refused(tmp_path: Path, bad: dict[str, Any], where: str) -> None:
    folder = _bundle(tmp_path / "bundle", bad.pop("network_def", _tiny_def()), extra=bad)
    with pytest.raises(ValueError, match="--trust-code") as info:
        load_teacher(_bundle_spec(folder))
    assert where in str(info.value)


def test_literal_bundle_builds_without_trust(tmp_path: Path) -> None:
    """The common safe case: an allow-listed network_def with literal arguments and '@' references."""
    folder = _bundle(tmp_path / "tiny", _tiny_def())
    model = load_teacher(_bundle_spec(folder))
    assert isinstance(model, TinyCNN) and not model.training
    ref = TinyCNN(4, 2, width=4, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))
    # a MONAI short name as bundles write it, resolved in monai.networks.nets
    from monai.networks.nets import Classifier

    net_def = {
        "_target_": "Classifier",
        "in_shape": [4, 16, 16],
        "classes": "@num_classes",
        "channels": [4, 8],
        "strides": [2, 2],
    }
    state = Classifier(in_shape=(4, 16, 16), classes=2, channels=(4, 8), strides=(2, 2)).state_dict()
    monai_folder = _bundle(tmp_path / "monai", net_def, state=state)
    assert isinstance(load_teacher(_bundle_spec(monai_folder)), Classifier)


# ------------------------------------------------------------------------------------------- weights
class _Payload:
    """Pickles to a call of Path.touch: what a malicious checkpoint does on unpickling."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_payload_in_weights_is_refused_and_does_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    evil = tmp_path / "model.pt"
    with open(evil, "wb") as f:
        pickle.dump({"head.weight": _Payload(marker)}, f)
    torch.save({"state_dict": _Payload(marker)}, tmp_path / "torchsaved.pt")
    for path in (evil, tmp_path / "torchsaved.pt"):
        with pytest.raises(ValueError, match="weights_only=True"):
            load_weights(path)
        with pytest.raises(ValueError, match="weights_only=True"):
            load_classifier("medxai.networks.classifiers:TinyCNN", str(path), {"in_channels": 4, "num_classes": 2})
        with pytest.raises(ValueError, match="weights_only=True"):
            load_teacher(
                TeacherSpec(
                    kind="class_path",
                    path=str(path),
                    num_classes=2,
                    class_path="medxai.networks.classifiers:TinyCNN",
                    init_kwargs={"in_channels": 4, "num_classes": 2, "width": 4},
                ),
                trust_code=True,
            )
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_teacher_needs_no_trust(tmp_path: Path) -> None:
    net = TinyCNN(4, 2, width=4).eval()
    torch.jit.save(torch.jit.script(net), str(tmp_path / "t.ts"))
    model = load_teacher(TeacherSpec(kind="torchscript", path=str(tmp_path / "t.ts"), num_classes=2, image_size=16))
    x = torch.rand(1, 4, 16, 16)
    assert torch.allclose(model(x), net(x))


# ----------------------------------------------------------------------------------------------- CLI
@pytest.fixture()
def evil_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A module outside the allow-list whose class touches a marker when built, then stops the job."""
    marker = tmp_path / "RAN"
    (tmp_path / "mymodels.py").write_text(
        "import pathlib\nimport torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self, **kwargs):\n"
        f"        pathlib.Path({str(marker)!r}).touch()\n"
        "        raise ValueError('mymodels.Net was built')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return marker


def _dr_job(tmp_path: Path, class_path: str, init_kwargs: dict[str, Any]) -> tuple[Path, Path]:
    """A DR explain config whose classifier is ``class_path``, and a colour phantom photo."""
    from PIL import Image

    from medxai.phantoms import fundus_config, make_fundus_case

    save_weights(tmp_path / "clf.safetensors", _tiny_state(3))
    spec = {
        "kind": "class_path",
        "class_path": class_path,
        "init_kwargs": init_kwargs,
        "num_classes": 2,
        "path": str(tmp_path / "clf.safetensors"),
    }
    config = {
        "input": "fundus",
        "method": "dvce",
        "target_class": 0,
        "seed": 0,
        "image_size": 32,
        "classifier": spec,
        "diffusion": {"path": str(tmp_path / "ddpm.safetensors")},
        "dvce": {},
    }
    (tmp_path / "dr.yaml").write_text(yaml.safe_dump(config))
    Image.fromarray(np.asarray(make_fundus_case(3, fundus_config("test")).rgb)).save(tmp_path / "photo.png")
    return tmp_path / "dr.yaml", tmp_path / "photo.png"


def test_cli_explain_refuses_untrusted_class_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipelines.cli import main

    marker = tmp_path / "MARKER"
    config, photo = _dr_job(tmp_path, "subprocess:Popen", {"args": ["touch", str(marker)]})
    assert load_config(config).get("classifier.class_path") == "subprocess:Popen"
    code = main(["explain", "-c", str(config), "-i", str(photo), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert not marker.exists()
    text = " ".join(err.split())  # rich wraps long lines on narrow terminals
    assert f"{config}: classifier.class_path 'subprocess:Popen' was not loaded" in text
    assert "--trust-code" in text and "Traceback" not in err
    assert err.count("Error:") == 1


def test_cli_trust_code_flag_reaches_the_loader(tmp_path: Path, evil_module: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipelines.cli import main

    config, photo = _dr_job(tmp_path, "mymodels:Net", {})
    args = ["explain", "-c", str(config), "-i", str(photo), "-o", str(tmp_path / "out")]
    assert main(args) == 2
    assert not evil_module.exists() and "--trust-code" in capsys.readouterr().err
    assert main([*args, "--trust-code"]) == 2  # now imported and built: the class itself stops the job
    assert evil_module.exists() and "mymodels.Net was built" in capsys.readouterr().err


def test_cli_train_explainer_refuses_untrusted_class(
    tmp_path: Path, evil_module: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipelines.cli import main

    save_weights(tmp_path / "w.safetensors", _tiny_state())
    args = [
        "train",
        "explainer",
        "--classifier-class",
        "mymodels:Net",
        "--classifier-weights",
        str(tmp_path / "w.safetensors"),
        "--phantom",
        "ct",
        "-o",
        str(tmp_path / "out"),
    ]
    assert main(args) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--classifier-class 'mymodels:Net' was not loaded" in err and not evil_module.exists()
    assert main([*args, "--trust-code"]) == 2
    assert evil_module.exists()


def test_cli_train_teacher_refuses_untrusted_class(tmp_path: Path, evil_module: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipelines.cli import main

    base = yaml.safe_load((REPO / "configs" / "ct_prognosis.yaml").read_text())
    base["teacher"]["class_path"] = "mymodels:Net"
    base["teacher"]["path"] = str(tmp_path / "teacher.safetensors")
    base["autoencoder"]["config"] = str(REPO / "configs" / Path(base["autoencoder"]["config"]).name)
    (tmp_path / "ct.yaml").write_text(yaml.safe_dump(base))
    args = ["train", "teacher", "-c", str(tmp_path / "ct.yaml")]
    assert main(args) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{tmp_path / 'ct.yaml'}: teacher.class_path 'mymodels:Net' was not loaded" in err
    assert not evil_module.exists()
    assert main([*args, "--trust-code"]) == 2
    assert evil_module.exists() and not (tmp_path / "teacher.safetensors").exists()


def test_bench_hands_its_trust_to_every_config(tmp_path: Path) -> None:
    """``medxai bench --trust-code`` reaches the CT and DR configs the bench trains and loads from."""
    from pipelines.bench import ModelCache, StageClock, load_bench_settings

    settings = load_bench_settings(quick=True)
    trusted = ModelCache(tmp_path, settings, None, StageClock(None), trust_code=True)
    untrusted = ModelCache(tmp_path, settings, None, StageClock(None))
    for which in ("ct", "ct_random", "ct_shortcut"):
        assert trusts_code(trusted.ct_config(which)) is True
        assert trusts_code(untrusted.ct_config(which)) is False
