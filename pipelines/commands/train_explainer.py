"""``medxai train explainer``: train an NN-Explainer network for a frozen classifier."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from pipelines.commands._options import trust_code_option

from ._groups import get_train_app

__all__ = ["register", "load_training_arrays", "phantom_arrays"]


def _parse_ints(text: str, name: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise ValueError(f"{name} must be comma-separated integers like '16,32,64', got {text!r}.") from err
    if not values:
        raise ValueError(f"{name} is empty; pass e.g. '16,32,64'.")
    return values


def load_training_arrays(path: Path) -> tuple[Any, Any]:
    """Read images ``(N, C, *spatial)`` and labels ``(N,)``/``(N, K)`` from ``path``.

    ``path`` is an ``.npz`` (arrays ``images`` and ``labels``), a ``.pt`` file holding a dict of
    those two tensors (read with ``torch.load(weights_only=True)``), or a folder with
    ``images.npy``/``labels.npy`` (or ``images.pt``/``labels.pt``).
    """
    import numpy as np
    import torch

    def from_pt(p: Path) -> Any:
        return torch.load(str(p), map_location="cpu", weights_only=True)

    if path.is_dir():
        found: dict[str, Any] = {}
        for key in ("images", "labels"):
            if (path / f"{key}.npy").is_file():
                found[key] = torch.from_numpy(np.load(path / f"{key}.npy", allow_pickle=False))
            elif (path / f"{key}.pt").is_file():
                found[key] = torch.as_tensor(from_pt(path / f"{key}.pt"))
            else:
                raise FileNotFoundError(f"data folder {str(path)!r} has no {key}.npy or {key}.pt.")
        images, labels = found["images"], found["labels"]
    elif path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            missing = {"images", "labels"} - set(data.files)
            if missing:
                raise ValueError(f"{str(path)!r} lacks arrays {sorted(missing)}; save images= and labels=.")
            images, labels = torch.from_numpy(data["images"]), torch.from_numpy(data["labels"])
    elif path.suffix == ".pt":
        data = from_pt(path)
        if not isinstance(data, dict) or not {"images", "labels"} <= set(data):
            raise ValueError(f"{str(path)!r} must hold a dict with tensors 'images' and 'labels'.")
        images, labels = torch.as_tensor(data["images"]), torch.as_tensor(data["labels"])
    else:
        raise ValueError(f"--data {str(path)!r}: expected a folder, an .npz or a .pt file.")
    if images.ndim not in (4, 5):
        raise ValueError(f"images have shape {tuple(images.shape)}; expected (N, C, H, W) or (N, C, D, H, W).")
    return images.float(), labels


def phantom_arrays(kind: str, n: int, size: int, seed: int) -> tuple[Any, Any]:
    """Images and binary labels from the project's phantoms (``medxai.phantoms``).

    ``ct``: four axial slices evenly spread over the lungs, HU window [-1000, 200] -> [0, 1],
    ``(N, 4, size, size)``; ``fundus``: RGB in [0, 1], ``(N, 3, size, size)``.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F

    try:
        from medxai import phantoms
    except ImportError as err:  # pragma: no cover - phantoms are part of the package
        raise ValueError("medxai.phantoms is not available; pass --data with images and labels.") from err
    images, labels = [], []
    if kind == "ct":
        for case in phantoms.iter_ct_cohort(n, seed):
            lungs = np.asarray(case.masks["lungs"])
            zs = np.nonzero(lungs.reshape(lungs.shape[0], -1).any(axis=1))[0]
            lo, hi = (int(zs.min()), int(zs.max())) if zs.size else (0, lungs.shape[0] - 1)
            idx = np.round(np.linspace(lo, hi, 6)[1:-1]).astype(int)
            stack = np.clip((np.asarray(case.hu)[idx] + 1000.0) / 1200.0, 0.0, 1.0)
            images.append(torch.from_numpy(stack.astype(np.float32)))
            labels.append(int(case.label))
    elif kind == "fundus":
        for case in phantoms.iter_fundus_cohort(n, seed):
            rgb = np.asarray(case.rgb, dtype=np.float32) / 255.0
            images.append(torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))))
            labels.append(int(case.label))
    else:
        raise ValueError(f"--phantom must be 'ct' or 'fundus', got {kind!r}.")
    batch = torch.stack([F.interpolate(im[None], size=(size, size), mode="bilinear", align_corners=False)[0] for im in images])
    return batch, torch.tensor(labels)


def register(app: typer.Typer) -> None:
    train = get_train_app(app)

    @train.command("explainer")
    def train_explainer_cmd(
        classifier_class: str = typer.Option(
            ..., "--classifier-class", help="Class path of the classifier, e.g. 'medxai.networks.classifiers:TinyCNN'."
        ),
        classifier_weights: Path = typer.Option(
            ..., "--classifier-weights", help="State dict (.pt read with weights_only=True, or .safetensors)."
        ),
        classifier_kwargs: str = typer.Option(
            "{}", "--classifier-kwargs", help='JSON constructor arguments, e.g. \'{"in_channels": 4, "num_classes": 2}\'.'
        ),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder for explainer.safetensors + explainer.json."),
        data: Path | None = typer.Option(
            None, "--data", help="Folder with images.npy/labels.npy (or .pt), or an .npz / .pt with images and labels."
        ),
        phantom: str | None = typer.Option(None, "--phantom", help="Train on phantoms instead: 'ct' or 'fundus'."),
        n: int = typer.Option(64, "--n", help="Number of phantom cases."),
        size: int = typer.Option(64, "--size", help="Phantom image size (pixels)."),
        channels: str = typer.Option("16,32,64", "--channels", help="Explainer UNet widths."),
        lr: float = typer.Option(1e-4, "--lr", help="Adam learning rate."),
        batch_size: int = typer.Option(16, "--batch-size"),
        epochs: int = typer.Option(50, "--epochs", help="Maximum epochs."),
        patience: int = typer.Option(5, "--patience", help="Early-stopping patience in epochs."),
        seconds: float | None = typer.Option(None, "--seconds", help="Wall-clock budget for training."),
        multilabel: bool | None = typer.Option(
            None, "--multilabel/--single-label", help="BCE on multi-hot labels or CE; default from the label shape."
        ),
        seed: int = typer.Option(0, "--seed"),
        trust_code: bool = trust_code_option("--classifier-class"),
    ) -> None:
        """Train an NN-Explainer network (masks for all classes in one pass) for a frozen classifier."""
        import json
        import logging

        import torch

        from medxai.explainers.nn_explainer import NNExplainerConfig, save_nn_explainer, train_nn_explainer
        from medxai.networks.classifiers import load_classifier, state_fingerprint

        log = logging.getLogger(__name__)
        if (data is None) == (phantom is None):
            raise TypeError("give exactly one of --data PATH and --phantom ct|fundus.")
        try:
            kwargs = json.loads(classifier_kwargs)
        except json.JSONDecodeError as err:
            raise ValueError(f"--classifier-kwargs is not valid JSON: {classifier_kwargs!r} ({err}).") from err
        if not isinstance(kwargs, dict):
            raise ValueError(f"--classifier-kwargs must be a JSON object, got {classifier_kwargs!r}.")
        if not classifier_weights.is_file():
            raise FileNotFoundError(f"--classifier-weights {str(classifier_weights)!r} does not exist.")
        classifier = load_classifier(
            classifier_class, str(classifier_weights), kwargs, trust_code=trust_code, where="--classifier-class"
        )
        if data is not None:
            images, labels = load_training_arrays(data)
            source: dict[str, Any] = {"data": str(data)}
        else:
            images, labels = phantom_arrays(str(phantom), n, size, seed)
            source = {"phantom": phantom, "n": n, "size": size, "phantom_seed": seed}
        with torch.no_grad():
            k = int(classifier.eval()(images[:1]).shape[1])
        is_multi = labels.ndim == 2 and labels.shape[1] == k and k > 1 if multilabel is None else multilabel
        if k == 1 and labels.ndim == 1:
            labels, is_multi = labels.float()[:, None], True
        config = NNExplainerConfig(
            num_classes=k,
            in_channels=int(images.shape[1]),
            spatial_dims=images.ndim - 2,
            channels=_parse_ints(channels, "--channels"),
            strides=(2,) * (len(_parse_ints(channels, "--channels")) - 1),
            multilabel=bool(is_multi),
            lr=lr,
            batch_size=batch_size,
            max_epochs=epochs,
            patience=patience,
            max_seconds=seconds,
            seed=seed,
        )
        net, history = train_nn_explainer(classifier, (images, labels), config)
        extra = {
            "classifier": {
                "class_path": classifier_class,
                "weights": str(classifier_weights),
                "kwargs": kwargs,
                "fingerprint": state_fingerprint(classifier),
            },
            "source": source,
            "n_images": int(images.shape[0]),
        }
        save_nn_explainer(net, config, out, history=history, extra=extra)
        best = history.val_loss[history.best_epoch] if history.best_epoch >= 0 else float("nan")
        log.info("trained %d steps in %.1f s", history.steps, history.seconds)
        typer.echo(
            f"wrote {out / 'explainer.safetensors'} (best validation loss {best:.4f} at epoch {history.best_epoch}, "
            f"{history.steps} steps, {history.seconds:.1f} s)"
        )
