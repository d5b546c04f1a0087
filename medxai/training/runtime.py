"""Where a training run executes: the device, bf16 autocast on CUDA, and torchrun's ranks.

``medxai train ... --device auto|cpu|cuda`` picks the device with :func:`resolve_device`; the one
training loop (:func:`medxai.training.trainers.fit`) computes the loss under :func:`autocast_for`
(bfloat16 on CUDA, plain float32 on the CPU, where bf16 is slow and changes the numbers).

Under ``torchrun --nproc-per-node N`` (PyTorch's launcher sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``) the autoencoder and teacher train with DistributedDataParallel: :func:`torchrun_ranks`
reads the environment, :func:`distributed` opens the process group (gloo on the CPU, NCCL on CUDA) and
closes it at the end, and :meth:`Ranks.part` is the slice of each global batch a rank computes. Every
rank draws the same global batch from the same seeded generator, so N processes follow the loss
curve of one process with the same global batch (up to floating-point rounding); only rank 0
writes checkpoints and weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
from collections.abc import Iterator, Mapping

import torch

__all__ = [
    "DEVICES",
    "Ranks",
    "torchrun_ranks",
    "resolve_device",
    "autocast_for",
    "distributed",
    "rank_zero_first",
    "single_process",
]

logger = logging.getLogger(__name__)

#: What ``--device`` accepts.
DEVICES = ("auto", "cpu", "cuda")

# process groups this process opened so far (every rank opens them in the same order)
_GROUPS_OPENED = itertools.count()


@dataclasses.dataclass(frozen=True)
class Ranks:
    """This process's place among the data-parallel processes of a run (one process: the default).

    Parameters
    ----------
    rank : int
        Global rank, 0 .. ``world_size - 1``; rank 0 writes checkpoints and weights.
    world_size : int
        Number of processes.
    local_rank : int
        Rank on this machine (its CUDA device index).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size or self.local_rank < 0:
            raise ValueError(
                f"rank {self.rank} / world size {self.world_size} / local rank {self.local_rank} are inconsistent; "
                "torchrun sets RANK, WORLD_SIZE and LOCAL_RANK with 0 <= RANK < WORLD_SIZE."
            )

    @property
    def active(self) -> bool:
        """More than one process: gradients are averaged across ranks."""
        return self.world_size > 1

    @property
    def writer(self) -> bool:
        """Rank 0, the one process that writes files."""
        return self.rank == 0

    def part(self, n: int) -> slice:
        """This rank's contiguous share of a global batch of ``n`` samples (``n`` divisible by the world size)."""
        if n % self.world_size:
            raise ValueError(
                f"a global batch of {n} samples does not split evenly over {self.world_size} processes; "
                f"choose a batch_size divisible by {self.world_size}."
            )
        k = n // self.world_size
        return slice(self.rank * k, (self.rank + 1) * k)


def torchrun_ranks(environ: Mapping[str, str] | None = None) -> Ranks:
    """The :class:`Ranks` that ``torchrun`` put in the environment (``Ranks()`` outside torchrun)."""
    env = os.environ if environ is None else environ
    try:
        return Ranks(int(env.get("RANK", "0") or 0), int(env.get("WORLD_SIZE", "1") or 1), int(env.get("LOCAL_RANK", "0") or 0))
    except ValueError as err:
        raise ValueError(f"the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK) is unusable: {err}") from err


def resolve_device(spec: str | torch.device = "auto", ranks: Ranks | None = None) -> torch.device:
    """The device of ``--device``: ``"auto"`` (CUDA when available, else the CPU), ``"cpu"`` or ``"cuda"``.

    Under torchrun a CUDA run uses the device ``cuda:<local rank>``.
    """
    text = str(spec)
    if text not in DEVICES and not text.startswith("cuda:"):
        raise ValueError(f"--device must be one of {', '.join(DEVICES)}, got {text!r}.")
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(
            f"--device {spec} was asked for but this PyTorch build or machine has no CUDA device "
            f"(torch {torch.__version__}); use --device cpu or --device auto."
        )
    if text == "cuda" and ranks is not None and ranks.active:
        return torch.device("cuda", ranks.local_rank)
    return torch.device(text)


def autocast_for(device: torch.device | str) -> contextlib.AbstractContextManager[object]:
    """The autocast context of a training step on ``device``: bfloat16 on CUDA, nothing on the CPU.

    bf16 keeps float32's exponent range, so unlike float16 it needs no gradient scaler; on the CPU
    it is slower than float32 and would make CPU runs differ from the documented figures.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def distributed(device: torch.device, ranks: Ranks | None = None) -> Iterator[Ranks]:
    """Yield this process's :class:`Ranks`, with the process group open while the block runs.

    Outside torchrun (one process) nothing is opened. Under torchrun the default process group is
    initialised from the environment (backend gloo on the CPU, NCCL on CUDA, where each rank uses
    ``cuda:<local rank>``) unless the caller already did, and destroyed at the end only if it was
    opened here.
    """
    import torch.distributed as dist

    ranks = torchrun_ranks() if ranks is None else ranks
    if not ranks.active or (dist.is_available() and dist.is_initialized()):
        yield ranks
        return
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed; run in one process (without torchrun).")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    from torch.distributed.rendezvous import rendezvous

    store, _, _ = next(iter(rendezvous("env://", ranks.rank, ranks.world_size)))
    # a fresh key prefix per group: a group reopened in the same process (teacher, then autoencoder)
    # would otherwise meet the keys the closed one left in torchrun's store, and its first collective hangs
    store = dist.PrefixStore(f"medxai/{next(_GROUPS_OPENED)}", store)  # type: ignore[attr-defined]
    dist.init_process_group(backend=backend, store=store, rank=ranks.rank, world_size=ranks.world_size)
    logger.info("process group open: rank %d of %d (%s)", ranks.rank, ranks.world_size, backend)
    try:
        yield ranks
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def rank_zero_first(ranks: Ranks) -> Iterator[None]:
    """Run the block on rank 0 first and on the other ranks after it (e.g. building a shared data cache)."""
    import torch.distributed as dist

    if ranks.active and not ranks.writer:
        dist.barrier()
    yield
    if ranks.active and ranks.writer:
        dist.barrier()


def single_process(what: str, ranks: Ranks | None = None) -> None:
    """Refuse to run ``what`` (a training stage) under torchrun with several processes (only the
    autoencoder and the teacher train with DDP)."""
    ranks = torchrun_ranks() if ranks is None else ranks
    if ranks.active:
        raise ValueError(
            f"{what!r} runs in one process, but torchrun started {ranks.world_size}; "
            "run it without torchrun (only the autoencoder and the teacher train with DistributedDataParallel)."
        )
