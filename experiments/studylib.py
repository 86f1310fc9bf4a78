"""What the studies of ``experiments/`` share: the resumable job runner and the statistics.

- :func:`run_jobs`: every run is a job writing ``OUT/results/<name>.json``; a job whose
  result exists is skipped, so repeating a command continues an interrupted study (the jobs
  themselves resume from their checkpoints);
- :func:`mean_sd`, :func:`cell`: mean ± sample standard deviation over seeds;
- :func:`welch`, :func:`one_sample`, :func:`holm`, :func:`mde`: differences with confidence
  intervals, multiple-comparison correction and the minimum detectable effect.

SciPy is not installed in this project's environment, so Student's t distribution is computed
here from the regularised incomplete beta function (continued fraction, as in Numerical
Recipes, ``betacf``); ``tests/experiments`` checks it against closed forms and table values.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from spap.files import atomic_write

__all__ = [
    "betainc",
    "cell",
    "holm",
    "mde",
    "mean_sd",
    "one_sample",
    "run_jobs",
    "t_cdf",
    "t_ppf",
    "welch",
    "write_json",
]

log = logging.getLogger("study")

Job = tuple[Callable[[dict[str, Any]], dict[str, Any]], dict[str, Any]]

# ----------------------------------------------------------------------------- jobs


def write_json(path: Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    data = (json.dumps(obj, indent=1) + "\n").encode()
    return atomic_write(path, lambda f: f.write(data), fsync=False)


def run_jobs(out: Path, jobs: Sequence[Job], workers: int = 1) -> tuple[list[dict[str, Any]], int]:
    """Run the jobs whose ``OUT/results/<spec["name"]>.json`` is missing; write each result.

    ``workers >= 1``: that many worker processes; ``0``: one job after the other in this
    process. A failing job is logged and counted; the others go on. Returns the results of
    every job that has one (in job order, old and new) and the number of failures.
    """
    results_dir = out / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    todo = [(fn, s) for fn, s in jobs if not (results_dir / f"{s['name']}.json").is_file()]
    log.info(
        "%d runs, %d to do, %s",
        len(jobs),
        len(todo),
        f"{workers} at a time" if workers else "in this process",
    )
    failed = 0

    def done(name: str, res: dict[str, Any]) -> None:
        write_json(results_dir / f"{name}.json", res)
        log.info(
            "%s done in %.1f min: %s",
            name,
            (res.get("train_seconds", 0.0) + res.get("eval_seconds", 0.0)) / 60,
            json.dumps(res.get("scores")),
        )

    if workers <= 0:
        for fn, spec in todo:
            try:
                res = fn(spec)
            except Exception as exc:  # report and go on with the other runs
                failed += 1
                log.error("%s failed: %s", spec["name"], exc)
                continue
            done(spec["name"], res)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(fn, spec): spec["name"] for fn, spec in todo}
            for fut in as_completed(futures):
                name = futures[fut]
                try:
                    res = fut.result()
                except Exception as exc:  # report and go on with the other runs
                    failed += 1
                    log.error("%s failed: %s", name, exc)
                    continue
                done(name, res)
    results = [
        json.loads((results_dir / f"{s['name']}.json").read_text())
        for _, s in jobs
        if (results_dir / f"{s['name']}.json").is_file()
    ]
    return results, failed


# ----------------------------------------------------------------------------- summaries


def mean_sd(values: Sequence[float | None]) -> tuple[float, float]:
    """Mean and sample standard deviation, ignoring ``None`` and NaN (NaN if undefined)."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else math.nan)


def cell(values: Sequence[float | None], digits: int = 3) -> str:
    """``mean ± sd`` for a table (``n/a`` without values, the mean alone for one value)."""
    m, s = mean_sd(values)
    if math.isnan(m):
        return "n/a"
    return f"{m:.{digits}f} ± {s:.{digits}f}" if not math.isnan(s) else f"{m:.{digits}f}"


# ----------------------------------------------------------------------------- Student's t


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        step = d * c
        h *= step
        if abs(step - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function ``I_x(a, b)`` for ``a, b > 0``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """``P(T <= t)`` for Student's t with ``df > 0`` degrees of freedom (any real ``df``)."""
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_ppf(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t (bisection on :func:`t_cdf`, to about 1e-12)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p == 0.5:
        return 0.0
    lo, hi = -1.0, 1.0
    while t_cdf(lo, df) > p:
        lo *= 2.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, abs(mid)):
            break
    return 0.5 * (lo + hi)


# ----------------------------------------------------------------------------- tests


def _sample_var(x: Sequence[float]) -> float:
    return statistics.variance(x) if len(x) > 1 else math.nan


def _interval(diff: float, se: float, df: float, alpha: float) -> dict[str, float]:
    if se > 0 and df > 0:
        t = diff / se
        p = 2.0 * (1.0 - t_cdf(abs(t), df))
        q = t_ppf(1.0 - alpha / 2.0, df)
        lo, hi = diff - q * se, diff + q * se
    else:  # no spread (or too few values): nothing can be said
        t = p = lo = hi = math.nan
    return {"diff": diff, "se": se, "df": df, "t": t, "p": p, "ci_low": lo, "ci_high": hi}


def welch(a: Sequence[float], b: Sequence[float], alpha: float = 0.05) -> dict[str, float]:
    """Welch's unequal-variance t test of ``mean(a) - mean(b)``.

    Returns ``diff``, its standard error ``se``, the Welch-Satterthwaite ``df``, ``t``, the
    two-sided ``p`` and the ``1 - alpha`` confidence interval ``ci_low``, ``ci_high`` (NaN
    where a group has fewer than two values or neither varies).
    """
    a, b = list(a), list(b)
    diff = statistics.fmean(a) - statistics.fmean(b)
    va, vb = _sample_var(a) / len(a), _sample_var(b) / len(b)
    se = math.sqrt(va + vb)
    den = (va**2 / (len(a) - 1) if len(a) > 1 else math.nan) + (
        vb**2 / (len(b) - 1) if len(b) > 1 else math.nan
    )
    df = (va + vb) ** 2 / den if den > 0 else math.nan
    return _interval(diff, se, df, alpha)


def one_sample(d: Sequence[float], alpha: float = 0.05) -> dict[str, float]:
    """One-sample t test of ``mean(d) = 0`` (a paired test when ``d`` holds differences);
    the same keys as :func:`welch`."""
    d = list(d)
    se = math.sqrt(_sample_var(d) / len(d))
    return _interval(statistics.fmean(d), se, len(d) - 1.0, alpha)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order; NaN stays NaN and is not counted)."""
    idx = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    m = len(idx)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def mde(se: float, df: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Minimum detectable effect of a two-sided t test at level ``alpha`` with ``power``:
    ``(t_{1-alpha/2} + t_{power}) * se`` (the usual normal-shift approximation, with t
    quantiles at the test's ``df``)."""
    if not (se > 0 and df > 0):
        return math.nan
    return (t_ppf(1.0 - alpha / 2.0, df) + t_ppf(power, df)) * se
