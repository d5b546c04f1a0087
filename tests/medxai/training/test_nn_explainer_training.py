"""train_nn_explainer on the one training loop: epochs, validation, early stopping, best-epoch restore,
time budget, progress; the classifier is left as it was."""

from __future__ import annotations

import pytest
import torch

from medxai.explainers.nn_explainer import NNExplainerConfig, build_explainer_network, train_nn_explainer
from medxai.networks.classifiers import TinyCNN, state_fingerprint


def _data(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    x = torch.rand(n, 2, 16, 16, generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    x[y == 1, :, :8, :8] += 0.5
    return x, y


def _config(**kw: object) -> NNExplainerConfig:
    base: dict[str, object] = dict(num_classes=2, in_channels=2, channels=(4, 8), strides=(2,), seed=0, batch_size=8)
    return NNExplainerConfig(**{**base, **kw})  # type: ignore[arg-type]


def _classifier() -> TinyCNN:
    return TinyCNN(2, 2, width=4, generator=torch.Generator().manual_seed(1)).eval()


def test_early_stopping_keeps_the_best_epoch_and_reports_progress() -> None:
    x, y = _data()
    clf = _classifier()
    before = state_fingerprint(clf)
    snapshots: list[dict[str, torch.Tensor]] = []
    epochs: list[tuple[int, float, float]] = []
    progress: list[tuple[str, int, int]] = []
    config = _config(max_epochs=10, patience=2, lr=3e-2, multilabel=False)
    net_holder: dict[str, torch.nn.Module] = {}

    def callback(epoch: int, train_loss: float, val_loss: float) -> None:
        epochs.append((epoch, train_loss, val_loss))
        snapshots.append({k: v.clone() for k, v in net_holder["net"].state_dict().items()})

    # a network of our own (fine-tuning entry), so that the callback can snapshot it after every epoch
    net_holder["net"] = build_explainer_network(config, torch.Generator().manual_seed(config.seed))
    # validation labels flipped: its loss falls while the masks are generic, then rises as they fit y
    net, hist = train_nn_explainer(
        clf,
        (x, y),
        config,
        val_data=(x[:16], 1 - y[:16]),
        network=net_holder["net"],
        callback=callback,
        progress=lambda *a: progress.append(a),
    )
    assert net is net_holder["net"]
    assert hist.stopped_early and len(hist.val_loss) == len(epochs) < config.max_epochs
    assert hist.best_epoch == min(range(len(hist.val_loss)), key=hist.val_loss.__getitem__) == len(epochs) - 3
    assert [e[2] for e in epochs] == hist.val_loss and hist.steps == 5 * len(epochs)  # 40 samples / 8
    assert progress == [("nn_explainer", e + 1, config.max_epochs) for e in range(len(epochs))]
    for k, v in net.state_dict().items():
        assert torch.equal(v, snapshots[hist.best_epoch][k]), k
    assert not net.training and not clf.training and state_fingerprint(clf) == before == hist.classifier_fingerprint
    assert all(p.requires_grad for p in clf.parameters())


def test_the_same_seed_trains_the_same_network() -> None:
    x, y = _data()
    config = _config(max_epochs=2, max_steps_per_epoch=3, val_fraction=0.25)
    a, ha = train_nn_explainer(_classifier(), (x, y), config)
    b, hb = train_nn_explainer(_classifier(), (x, y), config)
    assert state_fingerprint(a) == state_fingerprint(b) and ha.val_loss == hb.val_loss and ha.steps == 6


def test_time_budget_stops_after_one_step_and_still_validates() -> None:
    x, y = _data()
    _, hist = train_nn_explainer(_classifier(), (x, y), _config(max_epochs=5, max_seconds=0.0))
    assert hist.steps == 1 and len(hist.val_loss) == 1 and hist.best_epoch == 0 and not hist.stopped_early


def test_a_batch_that_does_not_fit_is_refused() -> None:
    x, y = _data()
    with pytest.raises(ValueError, match="divisible by 2"):
        train_nn_explainer(_classifier(), (x[:, :, :15, :15], y), _config(max_epochs=1))
