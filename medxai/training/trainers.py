"""The one training loop of medxai (:func:`fit`) and the trainers of the DiffExplainer parts: teacher
classifier, diffusion autoencoder, agent.

:func:`fit` is the loop every trainer uses (these, :mod:`medxai.training.dvce`,
:func:`~medxai.explainers.nn_explainer.train_nn_explainer`, :func:`fit_classifier`): the caller
owns the batches, the loss, the optimiser and one ``torch.Generator``; the loop does the steps,
gradient clipping, the finite-loss check, per-epoch validation with early stopping and best-epoch
restore, the wall-clock budget, step hooks (EMA, checkpoints), progress, bf16 autocast on CUDA and,
under torchrun, DistributedDataParallel (:mod:`medxai.training.runtime`).

The :class:`TrainConfig` trainers (:func:`train_loop`) draw random mini-batches from their own
generator, use Adam with gradient clipping, stop at ``steps`` or ``max_seconds`` (whichever comes
first), may save weights through a ``save`` callback and, given a checkpoint path, write a resume
checkpoint every ``save_every`` steps (:func:`medxai.training.checkpoint.save_train_state`): a run
killed after a checkpoint and resumed ends with the same weights, bit for bit, as an uninterrupted
run with the same seed. The autoencoder (and the DVCE DDPM) keep an exponential moving average (EMA)
of their weights (:func:`ema_model`) and end with it loaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from medxai.config import dataclass_from_mapping
from medxai.networks.classifiers import recalibrate_batchnorm
from medxai.progress import ProgressFn
from medxai.training.checkpoint import load_state_checked, load_train_state, save_train_state
from medxai.training.runtime import Ranks, autocast_for

__all__ = [
    "CheckpointPath",
    "TrainConfig",
    "FitResult",
    "fit",
    "random_batches",
    "ema_model",
    "train_loop",
    "train_with_ema",
    "fit_classifier",
    "train_teacher",
    "train_autoencoder",
    "train_agent",
    "compute_latents",
    "agreement",
]

logger = logging.getLogger(__name__)

LossFn = Callable[[Any, torch.Generator], torch.Tensor]
_Tensors = list[torch.Tensor] | tuple[torch.Tensor, ...]  # what AveragedModel hands its multi_avg_fn


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by the trainers.

    Parameters
    ----------
    steps : int
        Maximum optimiser steps.
    batch_size : int
    lr : float
        Adam learning rate.
    max_seconds : float or None
        Wall-clock budget; training stops after the step that crosses it.
    grad_clip : float
        Gradient-norm clip (1.0 as DiffAE).
    ema_decay : float
        EMA decay (autoencoder and DDPM only; warmed up as ``min(decay, (1+n)/(10+n))``).
    weight_decay : float
    seed : int
        Seed of the trainer's generator.
    save_every : int
        Every this many steps: write the resume checkpoint (trainers given one; also when the run
        ends) and call ``save``. 0: no resume checkpoints; ``save`` only at the end.
    bf16 : bool
        Compute the loss under bfloat16 autocast on CUDA (ignored on the CPU, which stays float32).
    """

    steps: int = 1000
    batch_size: int = 16
    lr: float = 1e-4
    max_seconds: float | None = None
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    weight_decay: float = 0.0
    seed: int = 0
    save_every: int = 0
    bf16: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got steps={self.steps}, batch_size={self.batch_size}.")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}.")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}.")
        if self.save_every < 0:
            raise ValueError(f"save_every must be >= 0 (0: no checkpoints), got {self.save_every}.")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build from a mapping (e.g. a YAML section); unknown keys raise ``ValueError``."""
        return dataclass_from_mapping(cls, data, "training")


# ----------------------------------------------------------------------------- the one loop
@dataclasses.dataclass
class FitResult:
    """What :func:`fit` did.

    Parameters
    ----------
    steps : int
        Optimiser steps taken (a resumed run counts those before the checkpoint too).
    epochs : int
        Epochs run (the last one possibly cut short by ``max_steps`` or ``max_seconds``).
    seconds : float
        Wall-clock time of the loop (of every call that continued this record).
    losses : list of float
        Training loss of every step (under torchrun: of the global batch, averaged over the ranks).
    train_loss, val_loss : list of float
        Per epoch: mean training loss (weighted by batch size) and validation loss (the training
        loss when there is no validation data).
    best_epoch : int
        Epoch with the lowest validation loss (-1 if none was finite).
    stopped_early : bool
        ``patience`` epochs passed without a lower validation loss.
    out_of_time : bool
        ``max_seconds`` ended the run.
    """

    steps: int = 0
    epochs: int = 0
    seconds: float = 0.0
    losses: list[float] = dataclasses.field(default_factory=list)
    train_loss: list[float] = dataclasses.field(default_factory=list)
    val_loss: list[float] = dataclasses.field(default_factory=list)
    best_epoch: int = -1
    stopped_early: bool = False
    out_of_time: bool = False


def _batch_len(batch: Any) -> int:
    """Number of samples in a batch: an index tensor ``(B,)``, a tensor ``(B, ...)`` or a tuple of them."""
    if isinstance(batch, (tuple, list)):
        return _batch_len(batch[0])
    return int(batch.shape[0]) if isinstance(batch, torch.Tensor) and batch.ndim else 1


def random_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless mini-batches of sample indices ``(batch_size,)`` drawn with replacement from ``range(n)``.

    Each index tensor is drawn from ``generator`` when the loop asks for the batch, so draws made by
    the loss (noise, flips) interleave with the batch draws in step order.
    """
    while True:
        yield torch.randint(0, n, (batch_size,), generator=generator)


@torch.no_grad()
def _evaluate(model: nn.Module, loss_fn: LossFn, batches: Iterable[Any], generator: torch.Generator) -> float:
    """Mean loss (weighted by batch size) over ``batches`` in eval mode without gradients."""
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        size = _batch_len(batch)
        total += float(loss_fn(batch, generator)) * size
        count += size
    return total / max(count, 1)


class _Objective(nn.Module):
    """The loss as a module: DistributedDataParallel synchronises gradients of what runs in its forward."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any, generator: torch.Generator) -> torch.Tensor:
        return self.loss_fn(batch, generator)


def _objective(model: nn.Module, loss_fn: LossFn, ranks: Ranks | None) -> Callable[[Any, torch.Generator], torch.Tensor]:
    """``loss_fn`` itself, or under several ranks the loss wrapped in DistributedDataParallel."""
    if ranks is None or not ranks.active:
        return loss_fn
    from torch.nn.parallel import DistributedDataParallel

    # device_ids=None: the batch (indices on the CPU) reaches loss_fn as it is
    return DistributedDataParallel(_Objective(model, loss_fn), device_ids=None)


def _agree(loss: torch.Tensor, late: bool, ranks: Ranks | None) -> tuple[float, bool]:
    """The step's loss value and whether the time budget is spent, the same on every rank.

    Under several ranks one all-reduce gives the mean of the ranks' losses (the global batch's loss:
    every rank holds an equal share) and stops all ranks once any is out of time, so none waits for
    a step that the others never take.
    """
    if ranks is None or not ranks.active:
        return float(loss.detach()), late
    import torch.distributed as dist

    both = torch.stack([loss.detach().float(), torch.tensor(float(late), device=loss.device)])
    dist.all_reduce(both)
    return float(both[0]) / ranks.world_size, bool(both[1] > 0)


_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def _dropout_rng(model: nn.Module, generator: torch.Generator) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """A per-step context for the forward pass that makes dropout draw from ``generator``.

    Dropout layers draw from torch's global RNG. For a model with active dropout each step forks the
    global RNG (CPU and the model's CUDA device), seeds the fork from ``generator`` and restores the
    global state afterwards, so the masks depend on the trainer's generator alone (seeds, resume) and
    nothing outside the step sees a change. Models without dropout draw nothing extra.
    """
    if not any(isinstance(m, _DROPOUT) and m.p > 0 for m in model.modules()):
        return contextlib.nullcontext
    device = next(model.parameters()).device
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []

    @contextlib.contextmanager
    def scope() -> Iterator[None]:
        seed = int(torch.randint(0, 2**62, (), generator=generator))
        with torch.random.fork_rng(devices=cuda):
            torch.default_generator.manual_seed(seed)
            for index in cuda:
                torch.cuda.default_generators[index].manual_seed(seed)
            yield

    return scope


def _expected_steps(steps: int, first: int, elapsed: float, max_steps: int, max_seconds: float | None) -> int:
    """The step count the run will end at: ``max_steps``, or fewer when the time budget ends it first
    (projected from the pace of this call's steps), so a progress bar reads against the real bound."""
    if max_seconds is None or steps <= first or elapsed <= 0:
        return max_steps
    projected = first + math.ceil((steps - first) * max_seconds / elapsed)
    return max(steps, min(max_steps, projected))


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Callable[[], Iterable[Any]],
    optimizer: torch.optim.Optimizer,
    *,
    generator: torch.Generator,
    max_steps: int | None = None,
    max_epochs: int = 1,
    max_steps_per_epoch: int | None = None,
    max_seconds: float | None = None,
    grad_clip: float | None = None,
    validation: Callable[[], Iterable[Any]] | None = None,
    patience: int | None = None,
    min_delta: float = 1e-6,
    restore_best: bool = False,
    after_step: Callable[[int], None] | None = None,
    after_epoch: Callable[[int, float, float], None] | None = None,
    progress: ProgressFn | None = None,
    stage: str = "model",
    result: FitResult | None = None,
    ranks: Ranks | None = None,
    bf16: bool = False,
) -> FitResult:
    """The training loop of every medxai trainer.

    Each epoch iterates ``batches()``; every batch gives ``loss = loss_fn(batch, generator)``, then
    ``zero_grad``, ``backward``, optional gradient-norm clipping, ``optimizer.step()`` and
    ``after_step(step)``. After the epoch the model is scored on ``validation()`` (or, without it, by
    its mean training loss); ``patience`` epochs without a loss lower by ``min_delta`` stop the run
    and ``restore_best`` loads the best epoch's weights at the end. The model is in train mode while
    it learns and in eval mode on return. A model with active dropout gets its masks from
    ``generator`` too (the global RNG is forked per step and left as it was).

    Parameters
    ----------
    model : nn.Module
        What ``optimizer`` trains (switched to train/eval mode; snapshotted for ``restore_best``).
    loss_fn : callable
        ``loss_fn(batch, generator) -> scalar tensor``; draws its randomness (noise, flips) from
        ``generator``. Also scores the validation batches (under ``torch.no_grad``).
    batches : callable
        ``batches()`` returns one epoch's batches (a DataLoader, or an endless
        :func:`random_batches` bounded by ``max_steps``).
    optimizer : torch.optim.Optimizer
        Its parameter groups are the clipped parameters.
    generator : torch.Generator
        The trainer's own generator (never the global RNG).
    max_steps : int, optional
        Stop after this many optimiser steps in all.
    max_epochs : int
        Stop after this many epochs.
    max_steps_per_epoch : int, optional
        Cap on the steps of one epoch (the rest of its batches are skipped).
    max_seconds : float, optional
        Wall-clock budget of this call: the run stops after the step during which it ran out (that
        epoch is still validated).
    grad_clip : float, optional
        Gradient-norm clip; ``None``: no clipping.
    validation : callable, optional
        ``validation()`` returns the validation batches, scored after every epoch.
    patience : int, optional
        Early stopping; ``None``: never.
    min_delta : float
        Improvement that resets the patience counter.
    restore_best : bool
        End with the weights of the epoch with the lowest validation loss.
    after_step : callable, optional
        ``after_step(step)`` after every optimiser step (1-based), once the step's loss is in
        ``result.losses``: EMA updates, checkpoints.
    after_epoch : callable, optional
        ``after_epoch(epoch, train_loss, val_loss)`` after every epoch (0-based).
    progress : ProgressFn, optional
        ``progress(stage, step, total)`` after every step when ``max_steps`` is given, where
        ``total`` is ``max_steps`` or, when ``max_seconds`` will end the run first, the step count
        projected from the pace so far (the last call has ``step == total``); else
        ``progress(stage, epoch + 1, max_epochs)`` after every epoch.
    stage : str
        Names the model in progress calls, logs and errors.
    result : FitResult, optional
        The record to fill in, updated in place (``after_step`` callbacks may read its losses). A
        resumed run passes the steps, losses and seconds of its checkpoint: they count towards
        ``max_steps`` (step mode, one epoch; its mean training loss then covers all steps).
    ranks : Ranks, optional
        Data parallelism under torchrun (process group open): the loss runs inside
        DistributedDataParallel, which averages the ranks' gradients. ``loss_fn`` gets the global
        batch and computes its rank's share (:meth:`Ranks.part`) as the mean over that share, so the
        average is the global batch's gradient; the logged loss is averaged over the ranks.
        Validation is not supported then.
    bf16 : bool
        Compute the loss under :func:`~medxai.training.runtime.autocast_for` the model's device
        (bfloat16 on CUDA; nothing changes on the CPU).

    Returns
    -------
    FitResult
        ``result`` when given.

    Raises
    ------
    RuntimeError
        A non-finite training loss (the step and the loss are named).
    """
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1 or None, got {max_steps}.")
    if max_epochs < 1:
        raise ValueError(f"max_epochs must be >= 1, got {max_epochs}.")
    result = FitResult() if result is None else result
    first = result.steps
    if first and max_epochs != 1:
        raise ValueError(f"a run continued from step {first} must be in step mode (max_epochs=1), got max_epochs={max_epochs}.")
    if ranks is not None and ranks.active and validation is not None:
        raise TypeError("validation under several torchrun ranks is not supported; validate after training, on rank 0.")
    if max_steps is not None and first >= max_steps:  # a resumed run that had already finished
        model.eval()
        return result
    params = [p for group in optimizer.param_groups for p in group["params"]]
    objective = _objective(model, loss_fn, ranks)
    device = next(iter(params)).device if params else torch.device("cpu")
    precision = (lambda: autocast_for(device)) if bf16 else contextlib.nullcontext
    dropout_rng = _dropout_rng(model, generator)
    best = math.inf
    best_state: dict[str, torch.Tensor] | None = None
    bad_epochs = 0
    start = time.perf_counter()
    for epoch in range(max_epochs):
        model.train()
        total, count = 0.0, 0
        for i, batch in enumerate(batches()):
            if max_steps_per_epoch is not None and i >= max_steps_per_epoch:
                break
            with dropout_rng(), precision():
                loss = objective(batch, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            late = max_seconds is not None and time.perf_counter() - start > max_seconds
            value, late = _agree(loss, late, ranks)
            if not math.isfinite(value):
                raise RuntimeError(f"{stage} training diverged at step {result.steps + 1} (loss {value}); lower lr.")
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
            result.steps += 1
            result.losses.append(value)
            size = _batch_len(batch)
            total, count = total + value * size, count + size
            if late:
                result.out_of_time = True
                logger.info("%s training stopped by max_seconds after %d steps", stage, result.steps)
            if after_step is not None:
                after_step(result.steps)
            if progress is not None and max_steps is not None:
                bound = (
                    result.steps
                    if late
                    else _expected_steps(result.steps, first, time.perf_counter() - start, max_steps, max_seconds)
                )
                progress(stage, result.steps, bound)
            if result.out_of_time or (max_steps is not None and result.steps >= max_steps):
                break
        result.epochs = epoch + 1
        # a continued run is in step mode, where every batch has the same size: the plain mean is the weighted one
        train_loss = math.fsum(result.losses) / len(result.losses) if first and result.losses else total / max(count, 1)
        val_loss = _evaluate(model, loss_fn, validation(), generator) if validation is not None else train_loss
        result.train_loss.append(train_loss)
        result.val_loss.append(val_loss)
        if max_epochs > 1:
            logger.info("%s epoch %d: train %.4f val %.4f", stage, epoch, train_loss, val_loss)
        if after_epoch is not None:
            after_epoch(epoch, train_loss, val_loss)
        if progress is not None and max_steps is None:
            progress(stage, epoch + 1, max_epochs)
        if val_loss < best - min_delta:
            best, bad_epochs, result.best_epoch = val_loss, 0, epoch
            if restore_best:
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad_epochs += 1
            if patience is not None and bad_epochs >= patience:
                result.stopped_early = True
                break
        if result.out_of_time or (max_steps is not None and result.steps >= max_steps):
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    result.seconds += time.perf_counter() - start
    return result


# ------------------------------------------------------------------------------ EMA
def ema_model(module: nn.Module, decay: float = 0.999) -> AveragedModel:
    """An exponential moving average of ``module``'s parameters (buffers copied), warmed up.

    torch's :class:`~torch.optim.swa_utils.AveragedModel` with the update of
    :func:`~torch.optim.swa_utils.get_ema_multi_avg_fn`; its decay is warmed up per update as
    ``min(decay, (1 + n) / (10 + n))`` (``n``: updates so far), which a fixed-decay
    ``get_ema_multi_avg_fn`` alone cannot do, so the decay is chosen per call. The average starts
    as a copy of ``module``, so the first training update uses ``n = 1`` (decay 2/11), as the
    hand-written EMA this replaces did.

    Returns
    -------
    AveragedModel
        Call ``.update_parameters(module)`` after every optimiser step; the averaged network is
        ``.module``.
    """
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"decay must be in [0, 1), got {decay}; e.g. 0.999.")

    def warmed_up(ema_params: _Tensors, params: _Tensors, num_averaged: torch.Tensor | int) -> None:
        n = int(num_averaged)
        get_ema_multi_avg_fn(min(decay, (1 + n) / (10 + n)))(ema_params, params, num_averaged)

    averaged = AveragedModel(module, multi_avg_fn=warmed_up, use_buffers=False)
    averaged.module.eval().requires_grad_(False)
    # AveragedModel copies the weights at its first update; doing that now makes the average start
    # at the untrained weights and the first training update count as n = 1
    averaged.update_parameters(module)
    return averaged


# ------------------------------------------------------------------- TrainConfig trainers
def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


#: TrainConfig fields that bound a run instead of shaping it: a resumed run may change them
_RUN_BOUNDS = ("steps", "max_seconds", "save_every", "bf16")

CheckpointPath = str | os.PathLike[str]
"""Where a trainer keeps its resume checkpoint (:func:`medxai.training.checkpoint.resume_path`)."""


def _restore(
    path: CheckpointPath,
    what: str,
    identity: Mapping[str, Any],
    modules: Mapping[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> FitResult:
    """Load a resume checkpoint into the modules, optimiser and generator; the record to continue."""
    state = load_train_state(path, what=what, identity=identity)
    for key, module in modules.items():
        if key not in state["modules"]:
            raise ValueError(f"checkpoint {str(path)!r} holds no {key!r} state for the {what}; start without --resume.")
        load_state_checked(module, state["modules"][key], str(path), what=f"{what} ({key})")
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as err:
        raise ValueError(
            f"the optimiser state in {str(path)!r} does not fit the {what} ({err}); start without --resume."
        ) from err
    generator.set_state(state["generator"])
    logger.info("%s: resumed from %s at step %d", what, path, state["step"])
    return FitResult(steps=int(state["step"]), losses=list(state["losses"]), seconds=float(state["seconds"]))


def train_loop(
    model: nn.Module,
    n: int,
    cfg: TrainConfig,
    loss_fn: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    *,
    params: list[nn.Parameter] | None = None,
    after_step: Callable[[], None] | None = None,
    save: Callable[[int], None] | None = None,
    progress: ProgressFn | None = None,
    what: str = "model",
    checkpoint: CheckpointPath | None = None,
    resume: bool = False,
    ranks: Ranks | None = None,
    extra_state: Mapping[str, nn.Module] | None = None,
) -> dict[str, Any]:
    """:func:`fit` with a :class:`TrainConfig`: Adam on random mini-batches of ``n`` samples.

    Parameters
    ----------
    model : nn.Module
        Trained in place; its device is where the loss runs.
    n : int
        Number of training samples; batches are index tensors ``(batch_size,)`` into them.
    cfg : TrainConfig
    loss_fn : callable
        ``loss_fn(idx, generator)``: the loss of the mini-batch ``idx``, every random draw taken from
        ``generator``. Under several ``ranks`` ``idx`` is the global batch and the loss is the mean
        over this rank's share ``idx[ranks.part(len(idx))]``.
    params : list of nn.Parameter, optional
        What Adam trains (default: the model's trainable parameters).
    after_step : callable, optional
        After each optimiser step (e.g. an EMA update).
    save : callable, optional
        ``save(step)`` every ``cfg.save_every`` steps (rank 0 only).
    progress : ProgressFn, optional
        ``progress(what, step, total)`` (see :func:`fit`).
    what : str
        The model's name in progress, logs, errors and checkpoints.
    checkpoint : path, optional
        The resume checkpoint: written (rank 0 only, atomically) every ``cfg.save_every`` steps and
        when the run ends, if ``cfg.save_every > 0``.
    resume : bool
        Continue from ``checkpoint`` (which must exist, hold this model and share the settings
        that shape the run; ``steps``, ``max_seconds``, ``save_every`` and ``bf16`` may differ).
    ranks : Ranks, optional
        torchrun data parallelism (see :func:`fit`); the batch size must split evenly over the ranks.
    extra_state : mapping of str to nn.Module, optional
        More state that the checkpoint keeps and a resume restores (e.g. ``{"ema": ...}``).

    Returns
    -------
    dict
        ``steps``, ``seconds``, mean loss of the first and last tenth (``loss_first``, ``loss_last``),
        ``losses`` (every step), and ``resumed_from`` (the checkpoint's step) when resumed.
    """
    gen = torch.Generator().manual_seed(cfg.seed)
    if params is None:
        params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    batch_size = min(cfg.batch_size, n)
    if ranks is not None:
        ranks.part(batch_size)  # refuses a batch that does not split evenly
    writer = ranks is None or ranks.writer
    identity = {"n": n, **{k: v for k, v in dataclasses.asdict(cfg).items() if k not in _RUN_BOUNDS}}
    modules = {"model": model, **(extra_state or {})}
    record = FitResult()
    if resume:
        if checkpoint is None:
            raise TypeError("resume=True needs checkpoint, the file to resume from.")
        record = _restore(checkpoint, what, identity, modules, opt, gen)
    first, before, t0 = record.steps, record.seconds, time.perf_counter()

    def write_checkpoint(step: int) -> None:
        assert checkpoint is not None
        save_train_state(
            checkpoint,
            what=what,
            identity=identity,
            step=step,
            losses=record.losses,
            seconds=before + time.perf_counter() - t0,
            modules=modules,
            optimizer=opt,
            generator=gen,
        )

    def each_step(step: int) -> None:
        if after_step is not None:
            after_step()
        if cfg.save_every and step % cfg.save_every == 0 and writer:
            if checkpoint is not None:
                write_checkpoint(step)
            if save is not None:
                save(step)

    run = fit(
        model,
        loss_fn,
        lambda: random_batches(n, batch_size, gen),
        opt,
        generator=gen,
        max_steps=cfg.steps,
        max_seconds=cfg.max_seconds,
        grad_clip=cfg.grad_clip,
        after_step=each_step,
        progress=progress,
        stage=what,
        result=record,
        ranks=ranks,
        bf16=cfg.bf16,
    )
    if checkpoint is not None and cfg.save_every and writer and run.steps > first and run.steps % cfg.save_every:
        write_checkpoint(run.steps)  # where the run ended (time budget, steps): a later resume continues here
    losses = run.losses
    k = max(1, len(losses) // 10)
    hist: dict[str, Any] = {
        "steps": run.steps,
        "seconds": run.seconds,
        "loss_first": sum(losses[:k]) / k if losses else math.nan,
        "loss_last": sum(losses[-k:]) / k if losses else math.nan,
        "losses": losses,
    }
    if resume:
        hist["resumed_from"] = first
    return hist


def train_with_ema(
    model: nn.Module,
    averaged: nn.Module,
    n: int,
    cfg: TrainConfig,
    loss_fn: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    *,
    save: Callable[[int], None] | None = None,
    progress: ProgressFn | None = None,
    what: str = "model",
    checkpoint: CheckpointPath | None = None,
    resume: bool = False,
    ranks: Ranks | None = None,
) -> dict[str, Any]:
    """:func:`train_loop` that keeps an EMA (:func:`ema_model`, ``cfg.ema_decay``) of the sub-module
    ``averaged`` (which holds every trained parameter) and ends with the EMA weights in it.

    ``save(step)`` is called every ``cfg.save_every`` steps and once at the end, each time with the
    EMA weights loaded (the live weights are put back afterwards during training), on rank 0 only.
    The resume checkpoint (``checkpoint``, ``resume``, ``ranks``: see :func:`train_loop`) holds the
    live weights and the EMA.
    """
    ema = ema_model(averaged, cfg.ema_decay)

    def save_ema(step: int) -> None:
        if save is None:
            return
        live = {k: v.detach().clone() for k, v in averaged.state_dict().items()}
        averaged.load_state_dict(ema.module.state_dict())
        try:
            save(step)
        finally:
            averaged.load_state_dict(live)

    hist = train_loop(
        model,
        n,
        cfg,
        loss_fn,
        params=[p for p in averaged.parameters() if p.requires_grad],
        after_step=lambda: ema.update_parameters(averaged),
        save=save_ema,
        progress=progress,
        what=what,
        checkpoint=checkpoint,
        resume=resume,
        ranks=ranks,
        extra_state={"ema": ema},
    )
    averaged.load_state_dict(ema.module.state_dict())
    model.eval()
    if save is not None and (ranks is None or ranks.writer):
        save(hist["steps"])
    return hist


def fit_classifier(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    batch_size: int = 16,
    lr: float = 1e-3,
    generator: torch.Generator | None = None,
    balanced: bool = True,
    hflip: bool = True,
) -> nn.Module:
    """Train a classifier with cross-entropy for a fixed number of steps (never a time budget, so the
    result does not depend on machine load); returns it in eval mode with recalibrated BatchNorm.

    Parameters
    ----------
    model : nn.Module
        Maps (B, C, *spatial) to logits (B, K).
    x : torch.Tensor
        (N, C, *spatial) inputs.
    y : torch.Tensor
        (N,) integer labels.
    steps, batch_size, lr
        AdamW steps (weight decay 1e-4, no gradient clipping), mini-batch size and learning rate.
    generator : torch.Generator, optional
        Owns the batch sampling and flip draws (a fresh one seeded with 0 when omitted).
    balanced : bool
        Weight the loss by inverse class frequency.
    hflip : bool
        Random left-right flips as augmentation.
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} samples but y has {y.shape[0]}; pass one label per sample.")
    g = generator or torch.Generator().manual_seed(0)
    k = int(y.max()) + 1
    weight = None
    if balanced:
        counts = torch.bincount(y, minlength=k).clamp(min=1).float()
        weight = (1.0 / counts) / (1.0 / counts).sum() * k
    criterion = nn.CrossEntropyLoss(weight=weight)

    def loss_fn(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        xb = x[idx]
        if hflip and torch.rand((), generator=gen) < 0.5:
            xb = xb.flip(-1)
        return criterion(model(xb), y[idx])

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    fit(model, loss_fn, lambda: random_batches(x.shape[0], batch_size, g), opt, generator=g, max_steps=steps, stage="classifier")
    return recalibrate_batchnorm(model, x)


def _share(ranks: Ranks | None, n: int) -> slice:
    """This rank's slice of a global batch of ``n`` (all of it in one process)."""
    return slice(None) if ranks is None else ranks.part(n)


def train_teacher(
    model: nn.Module,
    stacks: torch.Tensor,
    labels: torch.Tensor,
    cfg: TrainConfig,
    progress: ProgressFn | None = None,
    class_weights: torch.Tensor | None = None,
    *,
    checkpoint: CheckpointPath | None = None,
    resume: bool = False,
    ranks: Ranks | None = None,
) -> dict[str, Any]:
    """Cross-entropy training of a classifier on stacks ``(N, C, S, S)`` and labels ``(N,)`` (int).

    ``checkpoint``, ``resume`` and ``ranks`` as in :func:`train_loop`. Under several ranks each
    rank's loss is its share of the global batch's class-weighted mean, so the ranks' averaged
    gradient is the one-process gradient (BatchNorm layers still see only their rank's share).
    """
    if stacks.shape[0] != labels.shape[0]:
        raise ValueError(f"stacks has {stacks.shape[0]} cases but labels has {labels.shape[0]}.")
    dev = _device(model)
    labels = labels.long()
    if class_weights is None:  # balance rare classes
        counts = torch.bincount(labels, minlength=int(labels.max()) + 1).float().clamp_min(1)
        class_weights = counts.sum() / (counts * len(counts))
    weight = class_weights.to(dev)
    world = 1 if ranks is None else ranks.world_size

    def loss_fn(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        share = _share(ranks, len(idx))
        x = stacks[idx[share]].to(dev)
        if torch.rand((), generator=gen) < 0.5:  # left-right flip augmentation
            x = x.flip(-1)
        y = labels[idx].to(dev)
        # the weighted mean over the global batch, split into the ranks' shares (DDP averages them)
        return F.cross_entropy(model(x), y[share], weight=weight, reduction="sum") / weight[y].sum() * world

    hist = train_loop(
        model, stacks.shape[0], cfg, loss_fn, progress=progress, what="teacher", checkpoint=checkpoint, resume=resume, ranks=ranks
    )
    recalibrate_batchnorm(model, stacks)
    with torch.no_grad():
        pred = torch.cat([model(c.to(dev)).argmax(1).cpu() for c in stacks.split(64)])
    hist["train_accuracy"] = float((pred == labels).float().mean())
    return hist


def train_autoencoder(
    ae: nn.Module,
    images: torch.Tensor,
    cfg: TrainConfig,
    progress: ProgressFn | None = None,
    save: Callable[[int], None] | None = None,
    *,
    checkpoint: CheckpointPath | None = None,
    resume: bool = False,
    ranks: Ranks | None = None,
) -> dict[str, Any]:
    """Train a :class:`~medxai.diffusion.DiffusionAutoencoder` on ``images`` ``(N, n, S, S)`` in [0, 1].

    Every slice is one training image (a stack of n slices gives n images). Ends with the EMA
    weights in ``ae.net``. ``checkpoint``, ``resume`` and ``ranks`` as in :func:`train_loop`: every
    rank draws the noise of the whole global batch and uses its share, so N ranks follow the loss
    curve of one process.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (N, n_slices, S, S), got {tuple(images.shape)}.")
    flat = images.reshape(-1, 1, *images.shape[2:])
    dev = _device(ae)

    def loss_fn(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        share = _share(ranks, len(idx))
        t, noise = ae.training_noise((len(idx), *flat.shape[1:]), gen)
        return ae.training_loss(flat[idx[share]].to(dev), noise=(t[share], noise[share]))

    return train_with_ema(
        ae,
        ae.net,
        flat.shape[0],
        cfg,
        loss_fn,
        save=save,
        progress=progress,
        what="autoencoder",
        checkpoint=checkpoint,
        resume=resume,
        ranks=ranks,
    )


@torch.no_grad()
def compute_latents(ae: nn.Module, stacks: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Combined latents ``(N, n * z_dim)`` of stacks ``(N, n, S, S)`` (CPU tensor)."""
    dev = _device(ae)
    return torch.cat([ae.encode_stack(c.to(dev), batch_size).cpu() for c in stacks.split(max(1, batch_size // stacks.shape[1]))])


def agreement(a_logits: torch.Tensor, b_logits: torch.Tensor) -> float:
    """Fraction of rows where the two ``(N, K)`` logit arrays predict the same class."""
    return float((a_logits.argmax(1) == b_logits.argmax(1)).float().mean())


def train_agent(
    agent: nn.Module,
    latents: torch.Tensor,
    teacher_logits: torch.Tensor,
    teacher_features: torch.Tensor | None,
    cfg: TrainConfig,
    progress: ProgressFn | None = None,
    *,
    checkpoint: CheckpointPath | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Distil the teacher into the agent (on the agent's device; ``checkpoint``, ``resume``: :func:`train_loop`).

    Parameters
    ----------
    agent : Agent
    latents : torch.Tensor
        Raw combined latents ``(N, D)``; their mean/std are stored in the agent.
    teacher_logits : torch.Tensor
        ``(N, K)``.
    teacher_features : torch.Tensor or None
        ``(N, F)`` penultimate features: L1 on features (layer 2 frozen). ``None``: L1 on logits.
    """
    if latents.shape[0] != teacher_logits.shape[0]:
        raise ValueError(f"latents has {latents.shape[0]} rows but teacher_logits has {teacher_logits.shape[0]}.")
    dev = _device(agent)  # the tables are small: all on the agent's device
    latents, teacher_logits = latents.to(dev), teacher_logits.to(dev)
    teacher_features = None if teacher_features is None else teacher_features.to(dev)
    agent.set_latent_stats(latents)
    z_n = agent.normalise(latents)
    use_features = teacher_features is not None and agent.frozen_head
    if teacher_features is not None and teacher_features.shape[1] != agent.feature_dim:
        raise ValueError(
            f"teacher features are {teacher_features.shape[1]}-dimensional but the agent's layer 1 outputs "
            f"{agent.feature_dim}; build the agent with feature_dim={teacher_features.shape[1]}."
        )

    def loss_fn(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if use_features:
            return F.l1_loss(agent.features(z_n[idx]), teacher_features[idx])  # type: ignore[index]
        return F.l1_loss(agent(z_n[idx]), teacher_logits[idx])

    params = [p for p in agent.parameters() if p.requires_grad]
    hist = train_loop(
        agent,
        latents.shape[0],
        cfg,
        loss_fn,
        params=params,
        progress=progress,
        what="agent",
        checkpoint=checkpoint,
        resume=resume,
    )
    with torch.no_grad():
        hist["agreement_train"] = agreement(agent(z_n), teacher_logits)
    hist["mode"] = "features" if use_features else "logits"
    return hist
