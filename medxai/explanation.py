"""The result of every explainer: typed maps, counterfactuals, scores and provenance.

An :class:`Explanation` knows nothing about DICOM. Its fields are typed: the query's logits (and
their probabilities), the heatmaps, an optional :class:`CounterfactualSweep` (signed steps, images,
black-box logits/probabilities per step, the agent's where there is one, and the origin the steps are
measured from: the unmanipulated reconstruction, or the query itself), and the query's latent code.

:meth:`Explanation.save` writes the per-case layout every explain job shares (see its docstring); a
:class:`SourceGrid` supplied by the caller puts the maps back on the source image's grid. Every file
is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from atomicfs import atomic_path

__all__ = ["ArrayLike", "CounterfactualSweep", "Explanation", "SourceGrid", "probabilities", "strip_image"]

logger = logging.getLogger(__name__)

ArrayLike = Any  # np.ndarray or torch.Tensor; torch is not imported here to keep this module light

_JSON_NAME = "explanation.json"
FORMAT_VERSION = 2


def _np(value: ArrayLike) -> np.ndarray:
    """``value`` as a numpy array (detached and on the CPU for torch tensors)."""
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):  # torch.Tensor without importing torch
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _opt(value: ArrayLike | None) -> np.ndarray | None:
    return None if value is None else _np(value)


def probabilities(logits: ArrayLike, activation: str = "softmax") -> np.ndarray:
    """Probabilities ``(..., K)`` from logits: softmax over the last axis, or a per-logit sigmoid
    (``activation="sigmoid"``, multi-label models, and always for ``K = 1``)."""
    from scipy.special import expit, softmax

    z = _np(logits).astype(np.float64)
    if activation == "sigmoid" or z.shape[-1] == 1:
        return expit(z)
    if activation != "softmax":
        raise ValueError(f"activation must be 'softmax' or 'sigmoid', got {activation!r}.")
    return softmax(z, axis=-1)


def _jsonable(value: Any) -> Any:
    """Convert numpy/torch scalars and arrays inside ``value`` to plain JSON types."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray) or hasattr(value, "detach"):
        return _np(value).tolist()
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    return repr(value)


def _cat(parts: Sequence[ArrayLike | None], axis: int = 0) -> np.ndarray | None:
    if any(p is None for p in parts):
        return None
    return np.concatenate([_np(p) for p in parts], axis=axis)


@dataclasses.dataclass(frozen=True)
class CounterfactualSweep:
    """Counterfactuals of one batch at signed steps of a manipulation.

    Parameters
    ----------
    steps : sequence of float
        Signed step sizes ``(S,)``, ascending; negative = away from the target, positive = towards
        it (DiffExplainer: ``-a_k .. -a_1, +a_1 .. +a_k``; DVCE: ``[1.0]``, the counterfactual).
    images : array
        ``(B, S, C, *spatial)``: the counterfactual at every step, on the explainer's input grid.
    logits : array
        ``(B, S, K)``: the black box's logits on every counterfactual.
    origin : array, optional
        ``(B, C, *spatial)``: what the steps are measured from -- the unmanipulated reconstruction
        (DiffExplainer) -- or ``None``: the query itself (DVCE).
    origin_logits : array, optional
        ``(B, K)``: the black box's logits on ``origin``.
    agent_logits, agent_origin_logits : array, optional
        ``(B, S, K)`` and ``(B, K)``: the agent's logits (DiffExplainer's distilled student) at every
        step and at the origin.
    second_logits, second_origin_logits, second_query_logits : array, optional
        ``(B, S, K)``, ``(B, K)``, ``(B, K)``: the logits of a second classifier the method compares
        with the black box (DiG-IN's disagreement) at every step, at the origin and on the query.
    activation : {"softmax", "sigmoid"}
        How logits become probabilities.
    """

    steps: tuple[float, ...]
    images: ArrayLike
    logits: ArrayLike
    origin: ArrayLike | None = None
    origin_logits: ArrayLike | None = None
    agent_logits: ArrayLike | None = None
    agent_origin_logits: ArrayLike | None = None
    second_logits: ArrayLike | None = None
    second_origin_logits: ArrayLike | None = None
    second_query_logits: ArrayLike | None = None
    activation: str = "softmax"

    #: the fields with a leading batch axis (what select / concat act on)
    _BATCHED: ClassVar[tuple[str, ...]] = (
        "images",
        "logits",
        "origin",
        "origin_logits",
        "agent_logits",
        "agent_origin_logits",
        "second_logits",
        "second_origin_logits",
        "second_query_logits",
    )

    def __post_init__(self) -> None:
        steps = tuple(float(s) for s in self.steps)
        object.__setattr__(self, "steps", steps)
        if not steps or list(steps) != sorted(steps) or len(set(steps)) != len(steps):
            raise ValueError(f"steps must be distinct and ascending, got {list(steps)}.")
        shape = tuple(getattr(self.images, "shape", ()))
        if len(shape) < 4 or shape[1] != len(steps):
            raise ValueError(f"images must be (B, S={len(steps)}, C, *spatial), got shape {shape}.")
        lshape = tuple(getattr(self.logits, "shape", ()))
        if len(lshape) != 3 or lshape[:2] != shape[:2]:
            raise ValueError(f"logits must be (B, S, K) with B, S = {shape[:2]}, got shape {lshape}.")

    def index(self, step: float) -> int:
        """Position of ``step`` in :attr:`steps` (raises ``ValueError`` naming the valid steps)."""
        for i, s in enumerate(self.steps):
            if abs(s - float(step)) < 1e-9:
                return i
        raise ValueError(f"step {step!r} is not in the sweep; steps are {list(self.steps)}.")

    def at(self, step: float) -> np.ndarray:
        """Counterfactuals ``(B, C, *spatial)`` at ``step``."""
        return _np(self.images)[:, self.index(step)]

    def difference(self, step: float, query: ArrayLike | None = None) -> np.ndarray:
        """Signed change ``(B, C, *spatial)`` at ``step`` from the origin (or from ``query`` when the
        sweep has no origin)."""
        base = self.origin if self.origin is not None else query
        if base is None:
            raise ValueError("this sweep has no origin; pass the query to measure the change from.")
        return self.at(step) - _np(base)

    @property
    def probabilities(self) -> np.ndarray:
        """Black-box probabilities ``(B, S, K)``."""
        return probabilities(self.logits, self.activation)

    @property
    def origin_probabilities(self) -> np.ndarray | None:
        return None if self.origin_logits is None else probabilities(self.origin_logits, self.activation)

    @property
    def agent_probabilities(self) -> np.ndarray | None:
        return None if self.agent_logits is None else probabilities(self.agent_logits, self.activation)

    @property
    def agent_origin_probabilities(self) -> np.ndarray | None:
        return None if self.agent_origin_logits is None else probabilities(self.agent_origin_logits, self.activation)

    @property
    def positive_steps(self) -> tuple[float, ...]:
        return tuple(s for s in self.steps if s > 0)

    @property
    def negative_steps(self) -> tuple[float, ...]:
        return tuple(s for s in self.steps if s < 0)

    def select(self, index: int | slice) -> CounterfactualSweep:
        """The sweep of case(s) ``index`` (batch axis kept)."""
        sl = slice(index, index + 1) if isinstance(index, int) else index

        def pick(a: ArrayLike | None) -> np.ndarray | None:
            return None if a is None else _np(a)[sl]

        picked: dict[str, Any] = {f: pick(getattr(self, f)) for f in self._BATCHED}
        return dataclasses.replace(self, **picked)

    @classmethod
    def concat(cls, sweeps: Sequence[CounterfactualSweep]) -> CounterfactualSweep:
        """Join sweeps of several batches with the same steps along the batch axis."""
        first = sweeps[0]
        if any(s.steps != first.steps for s in sweeps):
            raise ValueError("sweeps with different steps cannot be joined.")
        joined = {f: _cat([getattr(s, f) for s in sweeps]) for f in cls._BATCHED}
        return cls(steps=first.steps, activation=first.activation, **joined)

    def summary(self, case: int = 0) -> dict[str, Any]:
        """JSON-ready probabilities of one case (what a person reads; logits kept under that name)."""
        out: dict[str, Any] = {
            "steps": list(self.steps),
            "probabilities": self.probabilities[case].tolist(),
            "logits": _np(self.logits)[case].tolist(),
        }
        if self.origin_logits is not None:
            out["origin_probabilities"] = self.origin_probabilities[case].tolist()  # type: ignore[index]
        if self.agent_logits is not None:
            out["agent_probabilities"] = self.agent_probabilities[case].tolist()  # type: ignore[index]
        if self.agent_origin_logits is not None:
            out["agent_origin_probabilities"] = self.agent_origin_probabilities[case].tolist()  # type: ignore[index]
        for name in ("second_logits", "second_origin_logits", "second_query_logits"):
            value = getattr(self, name)
            if value is not None:
                out[name.replace("logits", "probabilities")] = probabilities(value, self.activation)[case].tolist()
                out[name] = _np(value)[case].tolist()
        return out


class SourceGrid(Protocol):
    """Puts a map from the explainer's input grid back on the source image (given by the pipeline).

    ``to_source(array)`` maps ``(C, *spatial)`` (explainer grid) to the source grid (any shape the
    writer accepts); ``write(array, path)`` writes a source-grid array as NIfTI with the source's
    geometry and returns the file name.
    """

    def to_source(self, array: np.ndarray) -> np.ndarray: ...

    def write(self, array: np.ndarray, path: Path) -> str: ...


@dataclasses.dataclass(frozen=True)
class Explanation:
    """What an explainer says about one batch of inputs.

    Parameters
    ----------
    method : str
        Registered name of the explainer, e.g. ``"gradcam"``.
    target : str
        Description of the explained quantity.
    heatmaps : array
        ``(B, T, *spatial)``: one map per input and per target, on the input grid.
    logits : array, optional
        ``(B, K)``: the black box's logits on the query.
    target_class : int, optional
        The class explained (``None`` for neuron / multi-class targets).
    activation : {"softmax", "sigmoid"}
        How logits become :attr:`probabilities`.
    sweep : CounterfactualSweep, optional
        Counterfactuals (counterfactual methods only).
    channel_maps : array, optional
        ``(B, C, *spatial)``: one map per INPUT channel, for inputs whose channels are places (the CT
        four-slice stack: one map per slice). ``heatmaps`` is then their sum over channels.
    latent : array, optional
        ``(B, D)``: the query's latent code (DiffExplainer's combined semantic code).
    parameters : dict
        The explainer's settings (JSON-serialisable).
    seed : int or None
        Seed of the explainer's own random generator (``None`` for deterministic methods).
    timings : dict of str to float
        Seconds per stage.
    diagnostics : dict
        Method-specific figures (JSON-serialisable or arrays with a leading batch axis), e.g. the
        robust classifier's logits of DVCE or NN-Explainer's masked scores.
    """

    method: str
    target: str
    heatmaps: ArrayLike
    logits: ArrayLike | None = None
    target_class: int | None = None
    activation: str = "softmax"
    sweep: CounterfactualSweep | None = None
    channel_maps: ArrayLike | None = None
    latent: ArrayLike | None = None
    parameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    seed: int | None = None
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    diagnostics: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.method, str) or not self.method:
            raise ValueError(f"method must be a non-empty string, got {self.method!r}; pass the explainer's name.")
        shape = getattr(self.heatmaps, "shape", None)
        if shape is None or len(shape) < 4:
            raise ValueError(
                f"heatmaps must have shape (B, T, *spatial) with 2 or 3 spatial axes, got shape {shape}; "
                "add the batch and target axes."
            )

    # ------------------------------------------------------------------ views
    @property
    def batch_size(self) -> int:
        return int(self.heatmaps.shape[0])

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Spatial shape of the heatmaps, ``(H, W)`` or ``(D, H, W)``."""
        return tuple(int(s) for s in self.heatmaps.shape[2:])

    @property
    def probabilities(self) -> np.ndarray | None:
        """The black box's probabilities on the query ``(B, K)``."""
        return None if self.logits is None else probabilities(self.logits, self.activation)

    def heatmaps_numpy(self) -> np.ndarray:
        """The heatmaps as a float32 numpy array ``(B, T, *spatial)``."""
        return _np(self.heatmaps).astype(np.float32, copy=False)

    def target_probability(self) -> dict[str, list[float]] | None:
        """Probability of :attr:`target_class` on the query and, if any, at every sweep step."""
        if self.target_class is None or self.logits is None:
            return None
        k = self.target_class
        out = {"query": self.probabilities[:, k].tolist()}  # type: ignore[index]
        if self.sweep is not None:
            out["sweep"] = self.sweep.probabilities[:, :, k].tolist()
            if self.sweep.origin_logits is not None:
                out["origin"] = self.sweep.origin_probabilities[:, k].tolist()  # type: ignore[index]
        return out

    def select(self, index: int) -> Explanation:
        """The explanation of case ``index`` alone (batch axis kept, size 1)."""
        sl = slice(index, index + 1)
        diag = {k: (_np(v)[sl] if _batched(v, self.batch_size) else v) for k, v in self.diagnostics.items()}
        return dataclasses.replace(
            self,
            heatmaps=_np(self.heatmaps)[sl],
            logits=None if self.logits is None else _np(self.logits)[sl],
            sweep=None if self.sweep is None else self.sweep.select(sl),
            channel_maps=None if self.channel_maps is None else _np(self.channel_maps)[sl],
            latent=None if self.latent is None else _np(self.latent)[sl],
            diagnostics=diag,
        )

    @classmethod
    def concat(cls, parts: Sequence[Explanation]) -> Explanation:
        """Join the explanations of several batches (same method and settings) along the batch axis."""
        if not parts:
            raise ValueError("nothing to join: pass at least one explanation.")
        first = parts[0]
        if any(p.method != first.method for p in parts):
            raise ValueError(f"explanations of different methods cannot be joined: {sorted({p.method for p in parts})}.")
        sweeps = [p.sweep for p in parts]
        diag: dict[str, Any] = {}
        for key, value in first.diagnostics.items():
            if all(_batched(p.diagnostics.get(key), p.batch_size) for p in parts):
                diag[key] = _cat([p.diagnostics[key] for p in parts])
            else:
                diag[key] = value
        timings: dict[str, float] = {}
        for p in parts:
            for k, v in p.timings.items():
                timings[k] = timings.get(k, 0.0) + float(v)
        return dataclasses.replace(
            first,
            heatmaps=_cat([p.heatmaps for p in parts]),
            logits=_cat([p.logits for p in parts]),
            sweep=None if any(s is None for s in sweeps) else CounterfactualSweep.concat(sweeps),  # type: ignore[arg-type]
            channel_maps=_cat([p.channel_maps for p in parts]),
            latent=_cat([p.latent for p in parts]),
            timings=timings,
            diagnostics=diag,
        )

    # ------------------------------------------------------------------ files
    def save(
        self,
        folder: str | os.PathLike[str],
        *,
        query: ArrayLike | None = None,
        grid: SourceGrid | None = None,
        provenance: Mapping[str, Any] | None = None,
        channel_names: Sequence[str] | None = None,
        class_names: Sequence[str] | None = None,
    ) -> dict[str, str]:
        """Write the per-case layout of ONE case (batch size 1; use :meth:`select`) into ``folder``.

        Files (NIfTI float32; with ``grid`` the maps are on the source image's grid with its
        geometry, else on the explainer's grid with an identity affine):

        * ``heatmap.nii.gz`` -- the heatmap (several targets: ``heatmap_t{t}.nii.gz``); with ``grid``
          and :attr:`channel_maps`, the per-channel maps (on CT: each stack slice's own map on its
          source slice); without ``grid`` the per-channel maps also go to ``channel_maps.nii.gz``;
        * ``difference_minus.nii.gz`` / ``difference_plus.nii.gz`` -- signed change ``(C, *spatial)``
          at the largest negative / positive step of the sweep (counterfactual methods), put on the
          source grid channel by channel;
        * ``counterfactuals.npz`` -- float32 ``query``, ``origin`` (if any), ``steps`` and ``images``
          ``(S, C, *spatial)`` on the explainer's grid;
        * ``strip.png`` -- query | origin | counterfactuals | changes, each labelled with the black
          box's probability of the target class (2D inputs);
        * ``explanation.json`` -- method, target, probabilities (query and every step; logits under
          that name), parameters, seed, timings, diagnostics, ``provenance`` (patient / study /
          series identifiers, source path, config, versions) and the file list.

        Parameters
        ----------
        folder : path
            Created if missing; files of the same names are replaced.
        query : array, optional
            ``(1, C, *spatial)``: the input that was explained (for the strip and the npz).
        grid : SourceGrid, optional
            Puts the maps back on the source grid.
        provenance : mapping, optional
            Stored under ``"provenance"`` in ``explanation.json``.
        channel_names, class_names : sequence of str, optional
            Labels of the input channels (strip rows) and classes (JSON).

        Returns
        -------
        dict of str to str
            Role -> file name (relative to ``folder``).
        """
        if self.batch_size != 1:
            raise ValueError(f"save() writes one case; this explanation holds {self.batch_size}. Use select(i).")
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        files: dict[str, str] = {}
        heat = self.heatmaps_numpy()[0]

        def write_map(arr: np.ndarray, stem: str) -> str:
            if grid is not None:
                return grid.write(
                    grid.to_source(arr[None] if arr.ndim == len(self.spatial_shape) else arr), out / f"{stem}.nii.gz"
                )
            return _write_nifti(arr, out / f"{stem}.nii.gz")

        channel_maps = None if self.channel_maps is None else _np(self.channel_maps)[0].astype(np.float32)
        if channel_maps is not None and grid is not None and heat.shape[0] == 1:
            files["heatmap"] = write_map(channel_maps, "heatmap")
        elif heat.shape[0] == 1:
            files["heatmap"] = write_map(heat[0], "heatmap")
        else:
            for t in range(heat.shape[0]):
                files[f"heatmap_t{t}"] = write_map(heat[t], f"heatmap_t{t}")
        if channel_maps is not None and grid is None:
            files["channel_maps"] = _write_nifti(channel_maps, out / "channel_maps.nii.gz")
        q = None if query is None else _np(query)[0].astype(np.float32)
        sweep = self.sweep
        if sweep is not None:
            base = sweep.origin if sweep.origin is not None else query
            for name, steps in (("minus", sweep.negative_steps), ("plus", sweep.positive_steps)):
                if steps and base is not None:
                    step = steps[0] if name == "minus" else steps[-1]
                    files[f"difference_{name}"] = write_map(sweep.difference(step, query)[0], f"difference_{name}")
            arrays: dict[str, Any] = {
                "steps": np.asarray(sweep.steps, np.float32),
                "images": _np(sweep.images)[0].astype(np.float32),
            }
            if q is not None:
                arrays["query"] = q
            if sweep.origin is not None:
                arrays["origin"] = _np(sweep.origin)[0].astype(np.float32)
            buf = io.BytesIO()
            np.savez_compressed(buf, **arrays)
            _atomic_write_bytes(out / "counterfactuals.npz", buf.getvalue())
            files["counterfactuals"] = "counterfactuals.npz"
        if q is not None and len(self.spatial_shape) == 2:
            _write_png(strip_image(self, q, channel_names), out / "strip.png")
            files["strip"] = "strip.png"
        files["explanation"] = _JSON_NAME
        meta = self.to_json(case=0, class_names=class_names)
        meta["provenance"] = _jsonable(dict(provenance or {}))
        meta["files"] = files
        _atomic_write_bytes(out / _JSON_NAME, json.dumps(meta, indent=2, allow_nan=True).encode("utf-8"))
        logger.info("saved %s explanation to %s", self.method, out)
        return files

    def to_json(self, case: int = 0, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """JSON-ready summary of case ``case``: probabilities labelled as such, logits under that name."""
        heat = self.heatmaps_numpy()[case]
        meta: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "target": self.target,
            "target_class": self.target_class,
            "class_names": list(class_names) if class_names else None,
            "activation": self.activation,
            "heatmap_shape": list(heat.shape),
            "heatmap_range": [float(np.nanmin(heat)), float(np.nanmax(heat))] if heat.size else None,
            "probabilities": None if self.logits is None else self.probabilities[case].tolist(),  # type: ignore[index]
            "logits": None if self.logits is None else _np(self.logits)[case].tolist(),
            "sweep": None if self.sweep is None else self.sweep.summary(case),
            "parameters": _jsonable(self.parameters),
            "seed": self.seed,
            "timings": _jsonable(self.timings),
            "diagnostics": _jsonable(
                {k: (_np(v)[case] if _batched(v, self.batch_size) else v) for k, v in self.diagnostics.items()}
            ),
        }
        return meta

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> Explanation:
        """Read one case written by :meth:`save` (maps come back on the grid they were written on)."""
        src = Path(folder)
        meta_path = src / _JSON_NAME
        if not meta_path.is_file():
            raise ValueError(f"folder {str(src)!r} holds no {_JSON_NAME}; pass a folder written by Explanation.save().")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{meta_path}: format_version {meta.get('format_version')!r}, this medxai reads {FORMAT_VERSION}.")
        files = meta["files"]
        names = (
            [files["heatmap"]]
            if "heatmap" in files
            else [files[k] for k in sorted(f for f in files if f.startswith("heatmap_t"))]
        )
        heat = np.stack([_read_nifti(src / n) for n in names])[None]
        channel_maps = _read_nifti(src / files["channel_maps"])[None] if "channel_maps" in files else None
        sweep = None
        if meta.get("sweep") and "counterfactuals" in files:
            with np.load(src / files["counterfactuals"]) as z:
                s = meta["sweep"]
                sweep = CounterfactualSweep(
                    steps=tuple(s["steps"]),
                    images=z["images"][None],
                    logits=np.asarray(s["logits"])[None],
                    origin=z["origin"][None] if "origin" in z.files else None,
                    activation=meta.get("activation", "softmax"),
                    **{
                        k: np.asarray(s[k])[None]
                        for k in ("second_logits", "second_origin_logits", "second_query_logits")
                        if s.get(k) is not None
                    },
                )
        return cls(
            method=meta["method"],
            target=meta["target"],
            heatmaps=heat,
            logits=None if meta.get("logits") is None else np.asarray(meta["logits"])[None],
            target_class=meta.get("target_class"),
            activation=meta.get("activation", "softmax"),
            sweep=sweep,
            channel_maps=channel_maps,
            parameters=meta.get("parameters", {}),
            seed=meta.get("seed"),
            timings=meta.get("timings", {}),
            diagnostics=meta.get("diagnostics", {}),
        )


def _batched(value: Any, batch: int) -> bool:
    shape = getattr(value, "shape", None)
    return shape is not None and len(shape) >= 1 and int(shape[0]) == batch


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _write_nifti(array: np.ndarray, path: Path) -> str:
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(array, dtype=np.float32), affine=np.eye(4))
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path.name


def _read_nifti(path: Path) -> np.ndarray:
    import nibabel as nib

    img = nib.load(str(path))
    if not isinstance(img, nib.Nifti1Image):
        raise ValueError(f"{path} is not a NIfTI-1 image; it was not written by Explanation.save().")
    return np.asarray(img.dataobj, dtype=np.float32)


def _write_png(rgb: np.ndarray, path: Path) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")


# ------------------------------------------------------------------------------------ strip
def _gray(a: np.ndarray) -> np.ndarray:
    v = np.clip(a, 0.0, 1.0)
    return np.repeat((v * 255).round().astype(np.uint8)[..., None], 3, axis=-1)


def _signed(d: np.ndarray, scale: float) -> np.ndarray:
    """Red where the counterfactual is brighter, blue where darker, black = no change."""
    v = np.clip(d / scale, -1.0, 1.0) if scale > 0 else np.zeros_like(d)
    rgb = np.zeros((*d.shape, 3), dtype=np.float32)
    rgb[..., 0] = np.clip(v, 0, 1)
    rgb[..., 2] = np.clip(-v, 0, 1)
    return (rgb * 255).round().astype(np.uint8)


def _heat(h: np.ndarray) -> np.ndarray:
    hi = float(np.max(h)) if h.size else 0.0
    v = np.clip(h / hi, 0.0, 1.0) if hi > 0 else np.zeros_like(h)
    rgb = np.stack([v, v * 0.6, np.zeros_like(v)], axis=-1)  # black -> orange: intensity of the map
    return (rgb * 255).round().astype(np.uint8)


def image_tiles(images: np.ndarray) -> list[np.ndarray]:
    """``(C, H, W)`` -> one RGB tile per row: an RGB image (C = 3 in [0, 1]) or one tile per channel."""
    if images.shape[0] == 3:
        return [np.clip(np.round(np.moveaxis(images, 0, -1) * 255), 0, 255).astype(np.uint8)]
    return [_gray(c) for c in images]


def strip_image(
    explanation: Explanation,
    query: np.ndarray,
    channel_names: Sequence[str] | None = None,
    label: Callable[[str, float | None], str] | None = None,
) -> np.ndarray:
    """RGB uint8 strip of case 0: columns query | origin | every counterfactual | change at the
    outermost steps (red brighter, blue darker) | heatmap; one row per channel (one row for RGB).
    A header row labels every column with the black box's probability of the target class."""
    from PIL import Image, ImageDraw

    def default_label(name: str, p: float | None) -> str:
        return name if p is None else f"{name} p={p:.2f}"

    label = label or default_label
    k = explanation.target_class

    def prob(logits: ArrayLike | None) -> float | None:
        """The black box's probability of the target class (what the strip labels)."""
        if k is None or logits is None:
            return None
        return float(probabilities(logits, explanation.activation)[..., k])

    sw = explanation.sweep
    second = sw is not None and sw.second_logits is not None

    def second_line(logits: ArrayLike | None) -> str:
        """The second classifier's probability (a comparing method), under the black box's."""
        p = prob(logits)
        return "" if not second or p is None else f"\n2nd p={p:.2f}"

    def pick(a: ArrayLike | None, *index: int) -> np.ndarray | None:
        return None if a is None else _np(a)[(0,) + index]

    cols: list[tuple[str, list[np.ndarray]]] = []
    qlog = None if explanation.logits is None else _np(explanation.logits)[0]
    q2 = None if sw is None else pick(sw.second_query_logits)
    cols.append((label("query", prob(qlog)) + second_line(q2), image_tiles(query)))
    if sw is not None:
        if sw.origin is not None:
            name = label("recon", prob(pick(sw.origin_logits))) + second_line(pick(sw.second_origin_logits))
            cols.append((name, image_tiles(_np(sw.origin)[0])))
        for i, s in enumerate(sw.steps):
            name = label(f"{s:+g}", prob(_np(sw.logits)[0, i])) + second_line(pick(sw.second_logits, i))
            cols.append((name, image_tiles(_np(sw.images)[0, i])))
        ends = [s for s in (sw.negative_steps[:1] + sw.positive_steps[-1:])]
        diffs = [sw.difference(s, query[None])[0] for s in ends]
        scale = float(max([np.abs(d).max() for d in diffs] + [1e-6]))
        for s, d in zip(ends, diffs):
            rows = [d.sum(0)] if d.shape[0] == 3 else list(d)
            cols.append((f"change {s:+g}", [_signed(r, scale) for r in rows]))
    n_rows = max(len(c[1]) for c in cols)
    cmaps = None if explanation.channel_maps is None else _np(explanation.channel_maps)[0]
    if cmaps is not None and cmaps.shape[0] == n_rows:  # each row (slice) with its own map
        cols.append(("heatmap", [_heat(m) for m in cmaps]))
    else:
        cols.append(("heatmap", [_heat(explanation.heatmaps_numpy()[0].sum(0))] * n_rows))
    h, w = cols[0][1][0].shape[:2]
    tile_w = max(w, 64)
    header = 26 if second else 14
    canvas = np.zeros((header + n_rows * h, len(cols) * tile_w, 3), np.uint8)
    for j, (_, tiles) in enumerate(cols):
        for r in range(n_rows):
            tile = tiles[min(r, len(tiles) - 1)]
            canvas[header + r * h : header + (r + 1) * h, j * tile_w : j * tile_w + w] = tile
    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    for j, (name, _) in enumerate(cols):
        draw.text((j * tile_w + 1, 1), name, fill=(255, 255, 255))
    if channel_names:
        for r, name in enumerate(channel_names[:n_rows]):
            draw.text((1, header + r * h + 1), str(name), fill=(255, 255, 0))
    return np.asarray(img)
