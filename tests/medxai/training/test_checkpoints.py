"""One save/load format for every model: safetensors + JSON side-car, as a file or a folder; the shipped
models load bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medxai.diffusion import DiffusionAutoencoder, load_autoencoder, save_autoencoder
from medxai.diffusion.ddpm import DDPMNetConfig, ImageDDPM, load_ddpm
from medxai.explainers.nn_explainer import NNExplainerConfig, build_explainer_network, load_nn_explainer, save_nn_explainer
from medxai.networks.agent import Agent, load_agent, save_agent
from medxai.networks.classifiers import TinyCNN, classifier_from_pretrained, save_classifier
from medxai.networks.diffae import DiffAENet, DiffAENetConfig
from medxai.training.checkpoint import load_pretrained, pretrained_files, save_pretrained

PRETRAINED = Path(__file__).resolve().parents[3] / "medxai" / "pretrained"


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _no_leftovers(folder: Path) -> None:
    assert not [p.name for p in folder.rglob("*") if p.name.startswith(".")], "temporary files left behind"


def test_files_of_a_path(tmp_path: Path) -> None:
    assert pretrained_files(tmp_path / "m.safetensors", "agent") == (tmp_path / "m.safetensors", tmp_path / "m.json")
    assert pretrained_files(tmp_path, "agent") == (tmp_path / "agent.safetensors", tmp_path / "agent.json")
    assert pretrained_files(tmp_path / "new_folder", "ddpm")[0] == tmp_path / "new_folder" / "ddpm.safetensors"
    assert pretrained_files(tmp_path / "old.pt", "agent") == (tmp_path / "old.pt", tmp_path / "old.json")
    with pytest.raises(ValueError, match="neither a weights file"):
        pretrained_files(tmp_path / "m.onnx", "agent")
    with pytest.raises(ValueError, match=r"\.safetensors or name a folder"):
        save_pretrained(tmp_path / "m.pt", {"w": torch.zeros(1)}, {"kind": "x"}, name="m")


def test_load_refuses_missing_files_and_the_wrong_kind(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_pretrained(tmp_path / "none.safetensors", name="agent")
    save_pretrained(tmp_path / "m.safetensors", {"w": torch.ones(2)}, {"kind": "diffae"}, name="m")
    with pytest.raises(ValueError, match="kind='diffae', not 'agent'"):
        load_pretrained(tmp_path / "m.safetensors", name="agent", kinds=("agent",))
    state, meta, weights = load_pretrained(tmp_path, name="m")  # the folder form finds m.safetensors
    assert torch.equal(state["w"], torch.ones(2)) and meta == {"kind": "diffae"} and weights == tmp_path / "m.safetensors"
    (tmp_path / "m.json").unlink()
    with pytest.raises(ValueError, match="does not exist"):
        load_pretrained(tmp_path / "m.safetensors", name="m")
    assert load_pretrained(tmp_path / "m.safetensors", name="m", sidecar_required=False)[1] == {}
    with pytest.raises(ValueError, match="ImageDDPM"):
        load_ddpm(_written(tmp_path / "other", {"kind": "other"}))


def _written(folder: Path, meta: dict) -> Path:
    return save_pretrained(folder, {"w": torch.zeros(1)}, meta, name="ddpm")


def test_agent_round_trip_as_file_and_folder(tmp_path: Path) -> None:
    head = torch.nn.Linear(6, 2)
    agent = Agent(12, 6, 2, head, torch.Generator().manual_seed(0))
    agent.set_latent_stats(torch.randn(20, 12, generator=torch.Generator().manual_seed(1)))
    path = save_agent(agent, tmp_path / "a.safetensors", {"history": {"steps": 3}})
    assert path == tmp_path / "a.safetensors" and json.loads((tmp_path / "a.json").read_text())["history"] == {"steps": 3}
    _same_state(agent, load_agent(path))
    agent.save_pretrained(tmp_path / "run")
    back = Agent.from_pretrained(tmp_path / "run")
    assert (tmp_path / "run" / "agent.safetensors").is_file() and (tmp_path / "run" / "agent.json").is_file()
    _same_state(agent, back)
    assert back.frozen_head and not back.layer2.weight.requires_grad and not back.training
    _no_leftovers(tmp_path)


def test_ddpm_and_autoencoder_round_trip_through_folders(tmp_path: Path) -> None:
    ddpm = ImageDDPM(DDPMNetConfig(image_size=16, block_out_channels=(8, 16), norm_num_groups=4), generator=torch.Generator())
    ddpm.save_pretrained(tmp_path / "fundus")
    _same_state(ddpm.unet, ImageDDPM.from_pretrained(tmp_path / "fundus").unet)
    _same_state(ddpm.unet, load_ddpm(tmp_path / "fundus" / "ddpm.safetensors").unet)
    tiny = DiffAENetConfig(image_size=16, base_channels=8, channel_mults=(1, 2), num_res_blocks=1, z_dim=8, groups=4)
    ae = DiffusionAutoencoder(DiffAENet(tiny, torch.Generator().manual_seed(0)))
    save_autoencoder(ae, tmp_path / "ct")
    back = DiffusionAutoencoder.from_pretrained(tmp_path / "ct")
    assert back.config == ae.config
    _same_state(ae.net, back.net)
    # without a side-car the caller supplies the architecture
    (tmp_path / "ct" / "autoencoder.json").unlink()
    _same_state(ae.net, load_autoencoder(tmp_path / "ct", network=tiny).net)
    with pytest.raises(ValueError, match="no architecture"):
        load_autoencoder(tmp_path / "ct")
    _no_leftovers(tmp_path)


def test_classifier_round_trip_and_refusal(tmp_path: Path) -> None:
    model = TinyCNN(3, 2, width=4, generator=torch.Generator().manual_seed(0))
    kwargs = {"in_channels": 3, "num_classes": 2, "width": 4}
    save_classifier(model, tmp_path, "medxai.networks.classifiers:TinyCNN", kwargs, {"history": {"steps": 1}})
    meta = json.loads((tmp_path / "classifier.json").read_text())
    assert meta["kind"] == "classifier" and meta["init_kwargs"] == kwargs
    back = classifier_from_pretrained(tmp_path)
    _same_state(model, back)
    assert not back.training
    # the constructor arguments may come from the caller (a teacher's side-car has none)
    with pytest.raises(ValueError, match="do not fit"):
        classifier_from_pretrained(tmp_path, init_kwargs={**kwargs, "width": 8})
    save_pretrained(tmp_path / "x.safetensors", model.state_dict(), {"kind": "classifier"}, name="classifier")
    with pytest.raises(ValueError, match="class_path"):
        classifier_from_pretrained(tmp_path / "x.safetensors")


def test_nn_explainer_folder_format_is_unchanged(tmp_path: Path) -> None:
    config = NNExplainerConfig(num_classes=2, in_channels=2, channels=(4, 8), strides=(2,))
    net = build_explainer_network(config)
    out = save_nn_explainer(net, config, tmp_path / "ex", extra={"note": 1})
    assert sorted(p.name for p in out.iterdir()) == ["explainer.json", "explainer.safetensors"]
    meta = json.loads((out / "explainer.json").read_text())
    assert meta["format_version"] == 1 and meta["method"] == "nn_explainer" and meta["extra"] == {"note": 1}
    for where in (out, out / "explainer.safetensors"):
        back, cfg, _ = load_nn_explainer(where)
        assert cfg == config
        _same_state(net, back)
    with pytest.raises(ValueError, match="save_nn_explainer"):
        load_nn_explainer(tmp_path / "missing")


def _assert_loaded_exactly(module: torch.nn.Module, weights: Path) -> None:
    """Every tensor of the module equals the file's tensor (cast to the module's dtype, as load_state_dict does)."""
    stored = load_file(str(weights))
    state = module.state_dict()
    assert set(state) == set(stored)
    for k, v in state.items():
        assert torch.equal(v, stored[k].to(v.dtype)), k


def test_every_shipped_model_loads_bit_for_bit() -> None:
    for folder in ("ct", "ct_random", "ct_shortcut"):
        agent = Agent.from_pretrained(PRETRAINED / folder)
        _assert_loaded_exactly(agent, PRETRAINED / folder / "agent.safetensors")
        _same_state(agent, load_agent(PRETRAINED / folder / "agent.safetensors"))
    ae = DiffusionAutoencoder.from_pretrained(PRETRAINED / "ct")
    _assert_loaded_exactly(ae.net, PRETRAINED / "ct" / "autoencoder.safetensors")
    ddpm = ImageDDPM.from_pretrained(PRETRAINED / "fundus")
    _assert_loaded_exactly(ddpm.unet, PRETRAINED / "fundus" / "ddpm.safetensors")
    for name in ("classifier", "robust_classifier"):
        clf = classifier_from_pretrained(PRETRAINED / "fundus" / f"{name}.safetensors")
        _assert_loaded_exactly(clf, PRETRAINED / "fundus" / f"{name}.safetensors")
    for folder in sorted(PRETRAINED.glob("nn_explainer_*")):
        net, cfg, meta = load_nn_explainer(folder)
        assert meta["method"] == "nn_explainer" and cfg.num_classes == 2
        _assert_loaded_exactly(net, folder / "explainer.safetensors")
    for folder in ("ct", "ct_shortcut"):  # the teacher's side-car names its class; the config gives its arguments
        teacher = classifier_from_pretrained(
            PRETRAINED / folder / "teacher.safetensors", init_kwargs={"spatial_dims": 2, "in_channels": 4, "out_channels": 2}
        )
        _assert_loaded_exactly(teacher, PRETRAINED / folder / "teacher.safetensors")
