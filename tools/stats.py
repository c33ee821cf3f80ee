"""Small statistics for seed sweeps (no SciPy needed): mean and sample standard deviation,
and the paired one-tailed t-test the LLM-JEPA paper uses to compare JEPA with next-token
over the same seeds.

    mean, std = mean_std([57.1, 60.2, 55.0])
    t, p = paired_t_test_one_tailed(jepa_acc, ntp_acc)   # H1: mean(jepa - ntp) > 0

The Student-t CDF is computed from the regularized incomplete beta function
(``P(T > t) = I_{df/(df+t^2)}(df/2, 1/2) / 2`` for ``t >= 0``), evaluated with a continued
fraction (modified Lentz); its error is below 1e-12 for the degrees of freedom a sweep has.
"""

from __future__ import annotations

import math
from typing import Sequence


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
    """(mean, sample standard deviation with n - 1 in the denominator).

    An empty list gives (nan, nan); a single value gives (value, nan): one seed says nothing
    about the spread.
    """
    xs = [float(x) for x in xs]
    n = len(xs)
    if n == 0:
        return math.nan, math.nan
    mean = math.fsum(xs) / n
    if n < 2:
        return mean, math.nan
    var = math.fsum((x - mean) ** 2 for x in xs) / (n - 1)
    return mean, math.sqrt(var)


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        # even step
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        # odd step
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), for a, b > 0 and 0 <= x <= 1."""
    if not (a > 0 and b > 0):
        raise ValueError("betainc needs a > 0 and b > 0")
    if not 0.0 <= x <= 1.0:
        raise ValueError("betainc needs 0 <= x <= 1")
    if x == 0.0 or x == 1.0:
        return x
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    front = math.exp(log_front)
    # the continued fraction converges fast for x < (a + 1) / (a + b + 2); use the symmetry
    # I_x(a, b) = 1 - I_{1-x}(b, a) on the other side
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom (the one-tailed p-value)."""
    if df <= 0:
        raise ValueError("t_sf needs df > 0")
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return tail if t >= 0 else 1.0 - tail


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    return 1.0 - t_sf(t, df)


def paired_t_test_one_tailed(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Paired one-tailed t-test of H1: mean(a - b) > 0 (``a`` better than ``b``), over pairs
    (a[i], b[i]) that share a seed. Returns (t, p) with p = P(T_{n-1} >= t) under H0; this is
    ``scipy.stats.ttest_rel(a, b, alternative="greater")``.

    Edge cases (documented choices):
      * fewer than 2 pairs: (nan, nan), there is no variance to test against;
      * every difference equal (zero variance): t = +-inf or nan and p = 0 if the mean
        difference is > 0, else 1 (a constant gain is certain; no gain or a constant loss
        gives no evidence for H1). SciPy returns nan there.
    """
    if len(a) != len(b):
        raise ValueError(f"paired test needs equal lengths, got {len(a)} and {len(b)}")
    d = [float(x) - float(y) for x, y in zip(a, b)]
    n = len(d)
    if n < 2:
        return math.nan, math.nan
    mean, std = mean_std(d)
    # differences that agree to rounding error count as constant
    if std == 0.0 or std <= 1e-12 * max(1.0, abs(mean)):
        if mean > 0:
            return math.inf, 0.0
        return (-math.inf if mean < 0 else math.nan), 1.0
    t = mean / (std / math.sqrt(n))
    return t, t_sf(t, n - 1)
