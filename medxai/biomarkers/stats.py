"""Statistics of the cohort report: paired tests with FDR control, bootstrap intervals, pixel maps, AUROC.

Everything is from SciPy (``wilcoxon``, ``ttest_1samp``, ``bootstrap``, ``false_discovery_control``);
this module only applies it to arrays of per-case values and keeps the conventions in one place:

* a paired change is ``counterfactual - base`` per case; a case whose change is not finite (an empty
  region) is left out of that test and counted;
* p-values are two-sided; q-values are Benjamini-Hochberg over the family the caller passes;
* intervals are 95 % percentile bootstraps with a fixed seed (the report is reproducible to the digit).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PairedTest", "paired_test", "bh_q", "bootstrap_ci", "pixel_test", "auroc_with_ci"]


@dataclass(frozen=True)
class PairedTest:
    """A paired change across cases.

    Attributes
    ----------
    n : int
        Cases with a finite change.
    mean, median : float
        Of the change.
    ci_low, ci_high : float
        95 % bootstrap interval of the median change.
    dz, dz_low, dz_high : float
        Standardised effect (mean / sd of the change, Cohen's d_z) and its 95 % bootstrap interval.
    share_same_sign : float
        Share of cases whose change has the sign of the median (0 changes count against).
    p : float
        Wilcoxon signed-rank, two-sided (1.0 when every change is 0).
    """

    n: int
    mean: float
    median: float
    ci_low: float
    ci_high: float
    dz: float
    dz_low: float
    dz_high: float
    share_same_sign: float
    p: float


def _dz(d: np.ndarray, axis: int = -1) -> np.ndarray:
    sd = np.std(d, axis=axis, ddof=1)
    m = np.mean(d, axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sd > 0, m / np.where(sd > 0, sd, 1.0), 0.0)


def bootstrap_ci(values: np.ndarray, statistic: str = "median", *, n_resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of ``statistic`` (``median``, ``mean`` or ``dz``) of ``values``."""
    from scipy import stats

    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if v.size < 2 or np.all(v == v[0]):
        x = float(v[0]) if v.size and statistic != "dz" else (0.0 if v.size else float("nan"))
        return x, x
    fn = {"median": np.median, "mean": np.mean, "dz": _dz}[statistic]
    res = stats.bootstrap(
        (v,), fn, n_resamples=n_resamples, method="percentile", vectorized=True, random_state=np.random.default_rng(seed)
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def paired_test(change: np.ndarray, *, seed: int = 0, n_resamples: int = 2000) -> PairedTest:
    """Wilcoxon signed-rank test, effect sizes and intervals of one paired change ``(N,)``."""
    from scipy import stats

    d = np.asarray(change, np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        nan = float("nan")
        return PairedTest(0, nan, nan, nan, nan, nan, nan, nan, nan, nan)
    med = float(np.median(d))
    sign = np.sign(med) if med != 0 else np.sign(d.mean())
    same = float(np.mean(np.sign(d) == sign)) if sign != 0 else 0.0
    if np.all(d == 0) or d.size < 2:
        p = 1.0
    else:
        p = float(stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)
    lo, hi = bootstrap_ci(d, "median", seed=seed, n_resamples=n_resamples)
    dz = float(_dz(d)) if d.size > 1 else 0.0
    dlo, dhi = bootstrap_ci(d, "dz", seed=seed, n_resamples=n_resamples)
    return PairedTest(int(d.size), float(d.mean()), med, lo, hi, dz, dlo, dhi, same, p)


def bh_q(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values of ``p`` (NaN stays NaN and does not count in the family)."""
    from scipy import stats

    p = np.asarray(p, np.float64)
    q = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        q[ok] = stats.false_discovery_control(np.clip(p[ok], 0.0, 1.0), method="bh")
    return q


def pixel_test(change: np.ndarray, valid: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Pixel-wise one-sample t-test of ``change`` ``(N, ...)`` against 0, BH over the tested pixels.

    ``valid`` ``(...)``: the pixels to test (others get NaN). Returns ``mean``, ``share_same_sign``
    (share of cases whose change has the sign of the mean), ``t``, ``p`` and ``q``, each ``(...)``.
    """
    from scipy import stats

    d = np.asarray(change, np.float64)
    mean = d.mean(0)
    share = np.mean(np.sign(d) == np.sign(mean)[None], axis=0)
    sd = d.std(0, ddof=1) if len(d) > 1 else np.zeros_like(mean)
    test = (sd > 0) if valid is None else ((sd > 0) & np.asarray(valid, bool))
    t = np.full(mean.shape, np.nan)
    p = np.full(mean.shape, np.nan)
    if test.any() and len(d) > 1:
        res = stats.ttest_1samp(d[:, test], 0.0, axis=0)
        t[test], p[test] = res.statistic, res.pvalue
    return {"mean": mean, "share_same_sign": share, "t": t, "p": p, "q": bh_q(p)}


def auroc_with_ci(score: np.ndarray, labels: np.ndarray, *, seed: int = 0, n_resamples: int = 2000) -> tuple[float, float, float]:
    """AUROC of ``score`` for binary ``labels`` (ties count half) and its 95 % stratified bootstrap
    interval; NaN when a label is missing or no score is finite."""
    from scipy import stats

    s, y = np.asarray(score, np.float64), np.asarray(labels).astype(bool)
    ok = np.isfinite(s)
    s, y = s[ok], y[ok]
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return float("nan"), float("nan"), float("nan")

    def auc(pos: np.ndarray, neg: np.ndarray) -> float:
        r = stats.rankdata(np.concatenate([pos, neg]))
        return float((r[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2.0) / (len(pos) * len(neg)))

    est = auc(s[y], s[~y])
    rng = np.random.default_rng(seed)
    pos, neg = s[y], s[~y]
    boot = [auc(rng.choice(pos, n1), rng.choice(neg, n0)) for _ in range(min(n_resamples, 1000))]
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return est, float(lo), float(hi)
