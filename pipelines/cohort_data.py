"""A built cohort as training data: the store's stacks of every split, for ``medxai train ... --data COHORT/``.

The cohort's own split is used as it is: training sees only ``train``; ``validation`` gives the
held-out figures measured during training (teacher AUROC, agent agreement, the autoencoder's
reconstruction reference); ``test`` is left for ``medxai cohort explain``. Only built cases
(status ``ok``) are read.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["check_stack", "is_cohort", "cohort_training_data"]


def is_cohort(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder written by ``medxai cohort build``."""
    p = Path(path)
    return p.is_dir() and (p / "cases.csv").is_file()


def check_stack(cohort: Path, cfg: Any) -> None:
    """The cohort's stacks must be what the config's models take (slices, size, window), else ``ValueError``."""
    from medxai.training.ct import stack_config

    meta_path = cohort / "cohort.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    built = meta.get("stack")
    want = json.loads(json.dumps(dataclasses.asdict(stack_config(cfg))))
    if built is not None and built != want:
        diff = sorted(k for k in set(built) | set(want) if built.get(k) != want.get(k))
        raise ValueError(
            f"{meta_path}: the cohort's stacks were made with other stack settings than {cfg.source} ({', '.join(diff)}: "
            f"{[built.get(k) for k in diff]} vs {[want.get(k) for k in diff]}); rebuild the cohort with this config."
        )


def cohort_training_data(cohort: str | os.PathLike[str], cfg: Any) -> Any:
    """Read the built cases of ``cohort`` split by split.

    Returns
    -------
    medxai.training.ct.StackSplits
        ``splits[name]``: ``stacks`` float32 ``(N, C, S, S)``, ``labels`` int64 ``(N,)``, ``lungs``
        uint8 ``(N, C, S, S)``, ``ids`` str ``(N,)``; ``held_out="validation"``.

    Raises
    ------
    ValueError
        The stack settings differ from ``cfg``'s, no case is built, or the train split is empty or
        has one label only.
    FileNotFoundError
        ``cohort`` is not a built cohort.
    """
    from medxai.training.ct import StackSplits
    from pipelines.cohort import read_cases
    from pipelines.cohort_store import CohortStore

    root = Path(cohort)
    rows = [r for r in read_cases(root) if r.get("status") == "ok" and r.get("index", "") != ""]
    if not rows:
        raise ValueError(f"'{root}' has no built case (status ok in cases.csv); run medxai cohort build first.")
    check_stack(root, cfg)
    store = CohortStore.open(root)
    image, lungs = store.array("image"), store.array("lung_mask")
    splits: dict[str, dict[str, np.ndarray]] = {}
    for name in sorted({r["split"] for r in rows}):
        mine = [r for r in rows if r["split"] == name]
        index = [int(r["index"]) for r in mine]
        # one case at a time: a zarr orthogonal read of scattered rows would fetch them the same way
        splits[name] = {
            "stacks": np.stack([np.asarray(image[i], np.float32) for i in index]),
            "labels": np.array([int(r["label"]) for r in mine], dtype=np.int64),
            "lungs": np.stack([np.asarray(lungs[i], np.uint8) for i in index]),
            "ids": np.array([r["id"] for r in mine]),
        }
    train = splits.get("train")
    if train is None or len(np.unique(train["labels"])) < 2:
        have = {k: int(len(v["labels"])) for k, v in splits.items()}
        raise ValueError(
            f"'{root}': the train split must hold built cases of both labels to train on (built cases per split: {have})."
        )
    counts = {k: {"cases": len(v["labels"]), "positive": int(v["labels"].sum())} for k, v in splits.items()}
    return StackSplits(
        splits, source=f"cohort '{root}'", held_out="validation", info={"cohort": str(root.resolve()), "splits": counts}
    )
