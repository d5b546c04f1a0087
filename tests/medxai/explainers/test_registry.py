"""The method registry: every method is registered once, has a settings dataclass and a test suite."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from suite import ExplainerSuite

from medxai import registry
from medxai.explainers.base import Explainer
from medxai.registry import ANY_IMAGE, CT_STACK, FUNDUS, get_method, method_names, methods, register_method

TESTS = Path(__file__).resolve().parents[2]


def _suites() -> dict[str, type]:
    """Every ExplainerSuite subclass in the test tree, by the method it tests."""
    found: dict[str, type] = {}
    for path in sorted(TESTS.rglob("test_*.py")):
        if "ExplainerSuite" not in path.read_text(encoding="utf-8"):
            continue
        # pytest imports test files by their base name (rootdir-relative sys.path), so do the same
        module = sys.modules.get(path.stem)
        if module is None:
            spec = importlib.util.spec_from_file_location(path.stem, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[path.stem] = module
            spec.loader.exec_module(module)
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, ExplainerSuite) and value.method:
                found[value.method] = value
    return found


def test_every_registered_method_inherits_the_shared_suite() -> None:
    names = set(method_names())
    assert {"diffexplainer", "dvce", "gradcam", "gradcam++", "occlusion", "integrated_gradients", "rise", "nn_explainer"} <= names
    missing = names - set(_suites())
    assert not missing, f"registered methods without an ExplainerSuite subclass: {sorted(missing)}"


def test_specs_are_complete() -> None:
    for spec in methods():
        assert spec.cls.method == spec.name and issubclass(spec.cls, Explainer)
        assert dataclasses.is_dataclass(spec.settings) and spec.inputs and spec.summary
        spec.settings_from({})  # the defaults build
        with pytest.raises(ValueError, match="unknown"):
            spec.settings_from({"no_such_setting": 1})
    assert [s.name for s in methods(CT_STACK)] == [n for n in method_names() if get_method(n).accepts(CT_STACK)]
    assert "diffexplainer" not in method_names(FUNDUS) and "dvce" not in method_names(CT_STACK)


def test_lookup_errors_name_the_valid_methods() -> None:
    with pytest.raises(ValueError, match="registered methods: .*gradcam"):
        get_method("gradcma")
    with pytest.raises(ValueError, match="does not explain ct stack inputs.*gradcam"):
        get_method("dvce", CT_STACK)
    with pytest.raises(ValueError, match="needs the model"):
        get_method("diffexplainer").build(torch.nn.Linear(1, 1), get_method("diffexplainer").settings_from({}), {})


def test_a_method_added_as_one_class_is_listed_and_built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @dataclasses.dataclass(frozen=True)
    class FlatSettings:
        value: float = 1.0

    @register_method("flat_test", settings=FlatSettings, inputs=ANY_IMAGE, summary="constant maps (test)")
    class Flat(Explainer):
        def __init__(self, model: torch.nn.Module, value: float = 1.0, **kwargs: Any) -> None:
            super().__init__(model, **kwargs)
            self.value = value

        def _explain(self, x: torch.Tensor, target: Any, generator: Any, **inputs: Any) -> torch.Tensor:
            return torch.full((x.shape[0], 1, *x.shape[2:]), self.value)

    assert "flat_test" in method_names(CT_STACK) and Flat.method == "flat_test"
    spec = get_method("flat_test")
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    exp = spec.build(model, spec.settings_from({"value": 2.0}), {}).explain(torch.rand(1, 2, 8, 8), 0)
    assert exp.method == "flat_test" and float(exp.heatmaps.max()) == 2.0
    with pytest.raises(ValueError, match="registered twice"):

        @register_method("flat_test", settings=FlatSettings, inputs=ANY_IMAGE)
        class Other(Explainer):
            def _explain(self, x: torch.Tensor, target: Any, generator: Any, **inputs: Any) -> torch.Tensor:
                return x

    with pytest.raises(ValueError, match="unknown inputs"):
        register_method("bad", settings=FlatSettings, inputs={"mri"})


def test_mask_only_for_methods_that_take_one() -> None:
    from medxai.explainers import GradCAM

    model = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    with pytest.raises(TypeError, match="takes no mask"):
        GradCAM(model).explain(torch.rand(1, 2, 8, 8), 0, mask=torch.ones(1, 1, 8, 8))
