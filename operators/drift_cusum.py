"""Accumulating drift tests (issue #14): CUSUMs of predictive log-likelihood ratios for a rate and for a mean.

A window test (the current window against a reference) sees a change spread over a week only as the part of it
that falls between the two windows' centres: a 7-day ramp of a positive rate looks, at any hour, like a quarter
of its size, and under the noise floor. A CUSUM adds up the evidence of every new observation instead:

- null: the reference (the same rolling or marked reference as the window test);
- alternative: the *recent* observations (the span just before the new ones), shrunk towards the null by
  ``beta`` pseudo-observations, so that without a change it is a noisy copy of the null and the expected log
  ratio of a new observation is slightly negative;
- ``S = max(0, S + sum of log ratios of the new observations)``: a change of any speed makes the increments
  positive for as long as it lasts, and S grows until it crosses the calibrated level.

Both are estimated from data *before* the observations they score (predictive), so the statistic needs no
window of its own and no per-cluster tuning; the level (nats) is calibrated on stationary streams like every
other threshold. Evidence: the effect size (mean log ratio per observation over the current run of S, an
estimate of KL(new || old)) and the support (observations in that run).

:class:`RateCusum` scores a proportion (engagement's positive rate; a cluster's share of all engagements),
:class:`MeanDropCusum` a drop of a mean (content: the fresh items' cosine to the reference centroid).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["Cusum", "MeanDropCusum", "RateCusum"]


def _check(name: str, v: float, low: float = 0.0) -> None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not v > low or not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number > {low}, got {v!r}")


class Cusum:
    """The statistic ``S = max(0, S + llr)`` and its current run, with a hold after an alarm.

    A CUSUM that has crossed its level does not come back down by itself: once the (rolling) reference has
    absorbed a change, the increments are only slightly negative, so S would stay high for weeks and hide the
    next change. After an alarm the owner calls :meth:`hold`: S goes on as before (and may escalate the alert)
    while :attr:`level`, what the owner reports, stays at least at S's value at the alarm, so the alert stays
    open however noisy the increments; this lasts until ``until_ms``, the time the rolling reference needs to
    move past the change, and then for as long as the change goes on (S still reaching new highs within
    ``quiet_ms``: a week-long ramp is one alert, not one per cooldown); then S restarts from 0 against the new
    reference.

    >>> c = Cusum(quiet_ms=20)
    >>> for llr in (2.0, -1.0, 3.0):
    ...     c.step(llr, 1)
    >>> c.statistic, c.effect
    (4.0, 1.3333333333333333)
    >>> c.hold(100); c.step(-3.0, 1, now_ms=40); c.statistic, c.level  # during the hold: level kept
    (1.0, 4.0)
    >>> c.step(8.0, 1, now_ms=50); c.statistic, c.level
    (9.0, 9.0)
    >>> c.step(0.5, 1, now_ms=100); c.statistic  # the hold's time is over, but the change goes on
    9.5
    >>> c.step(-0.2, 1, now_ms=110); c.statistic  # no new high yet
    9.3
    >>> c.step(-0.1, 1, now_ms=120); c.statistic  # none for quiet_ms: restarted
    0.0
    """

    def __init__(self, quiet_ms: int = 24 * 3_600_000) -> None:
        self.quiet_ms = quiet_ms
        self.statistic = 0.0
        self.run_llr = 0.0  # sum of log ratios since S last left 0
        self.run_n = 0.0  # observations in that run
        self.last_llr: float | None = None  # per observation, at the last update (None: nothing scored)
        self.held_until: int | None = None
        self.held_level = 0.0  # S at the alarm
        self.peak: tuple[float, int] | None = None  # during a hold past its time: S's highest, and when

    @property
    def level(self) -> float:
        """What to report and gate on: S, and during a hold at least S at the alarm."""
        return max(self.statistic, self.held_level) if self.held_until is not None else self.statistic

    def hold(self, until_ms: int) -> None:
        """Restart the statistic from 0 once event time has passed ``until_ms`` and S has made no new high for
        ``quiet_ms``."""
        self.held_until, self.held_level, self.peak = until_ms, self.statistic, None

    def step(self, llr: float, n: float, now_ms: int | None = None) -> None:
        """Add ``llr`` (the log ratio of ``n`` new observations) at event time ``now_ms``."""
        self.last_llr = llr / n
        if self.held_until is not None and (now_ms is None or now_ms >= self.held_until):
            s = max(0.0, self.statistic + llr)
            if now_ms is not None and (self.peak is None or s > self.peak[0]):
                self.peak = (s, now_ms)
            elif now_ms is None or now_ms - self.peak[1] >= self.quiet_ms:  # type: ignore[index]
                self.statistic, self.run_llr, self.run_n, self.held_level = 0.0, 0.0, 0.0, 0.0
                self.held_until = self.peak = None
                return
        self.statistic = max(0.0, self.statistic + llr)
        if self.statistic == 0.0:
            self.run_llr, self.run_n = 0.0, 0.0
        else:
            self.run_llr += llr
            self.run_n += n

    @property
    def effect(self) -> float:
        """Mean log ratio per observation over the current run (nats): an estimate of KL(new || old)."""
        return self.run_llr / self.run_n if self.run_n else 0.0

    def state(self) -> list[Any]:
        return [self.statistic, self.run_llr, self.run_n, self.held_until,
                list(self.peak) if self.peak is not None else None, self.held_level]

    def load(self, st: Sequence[Any]) -> Any:
        """From :meth:`state` (also one from before the hold: three numbers)."""
        self.statistic, self.run_llr, self.run_n = (float(x) for x in st[:3])
        held, peak, level = (list(st[3:6]) + [None, None, 0.0])[:3]
        self.held_until, self.peak = held, (float(peak[0]), int(peak[1])) if peak is not None else None
        self.held_level = float(level) if held is not None else 0.0
        return self


class RateCusum(Cusum):
    """CUSUM of a proportion: ``update(reference, recent, new)``, each ``(trials, successes)``.

    Null: the reference rate (``+0.5 / +1`` smoothed). Alternative: the recent rate, shrunk towards the null by
    ``beta`` pseudo-trials. Both directions: the alternative points wherever the recent trials went. Nothing is
    scored while the reference has under ``min_reference`` trials or there are no new ones. ``min_effect``: the
    smallest change worth filling S (:meth:`allowance`), a rate difference or, with ``scale="log"``, a log ratio.

    >>> import random
    >>> rng = random.Random(3)
    >>> c, hits, recent = RateCusum(), [], []
    >>> for h in range(300):  # 40 trials an hour at 0.5 (reference: 72 h of it), ramping to 0.3 over hours 150-318
    ...     p = 0.5 - 0.2 * max(0, h - 150) / 168
    ...     k = sum(rng.random() < p for _ in range(40))
    ...     _ = c.update((2880, 1440), (sum(n for n, _ in recent), sum(s for _, s in recent)), (40, k))
    ...     recent = (recent + [(40, k)])[-12:]
    ...     if c.statistic > 10 and not hits:
    ...         hits.append(h)
    >>> hits
    [212]
    """

    def __init__(self, beta: float = 40.0, min_reference: int = 60, min_effect: float = 0.0,
                 scale: str = "difference") -> None:
        super().__init__()
        _check("beta", beta)
        _check("min_reference", min_reference)
        _check("min_effect", min_effect, low=-1e-300)
        if scale not in ("difference", "log"):
            raise ValueError(f"scale must be 'difference' or 'log', got {scale!r}")
        self.beta, self.min_reference, self.min_effect, self.scale = beta, min_reference, min_effect, scale
        self.rate_reference: float | None = None
        self.rate_recent: float | None = None
        self.counts: dict[str, list[int]] = {}

    def update(self, reference: tuple[float, float], recent: tuple[float, float], new: tuple[float, float],
               now_ms: int | None = None, tilt: float = 0.0) -> RateCusum:
        """Score the ``new`` trials; ``tilt``: a log factor on the reference rate that is no change of *this*
        rate (e.g. how the typical cluster's share moved: shares are parts of one whole)."""
        (n0, k0), (nr, kr), (n, k) = reference, recent, new
        self.last_llr = None
        if n0 < self.min_reference or n <= 0:
            return self
        p0 = min((k0 + 0.5) / (n0 + 1.0) * math.exp(tilt), 1.0 - 1e-9)
        pa = (kr + self.beta * p0) / (nr + self.beta)
        self.rate_reference, self.rate_recent = p0, pa
        self.counts = {"reference": [int(n0), int(k0)], "recent": [int(nr), int(kr)]}  # [trials, successes]
        llr = k * math.log(pa / p0) + (n - k) * math.log((1.0 - pa) / (1.0 - p0))
        self.step(llr - n * self.allowance(p0), n, now_ms)
        return self

    def allowance(self, p0: float) -> float:
        """Nats per trial taken off every increment (the classic CUSUM's reference value): half the KL divergence
        of a change of ``min_effect`` (a rate difference, or a log ratio with ``scale="log"``) from ``p0``.
        Changes smaller than that drain S instead of filling it: e.g. the shares of every other cluster, which
        fall a little when one cluster starts trending."""
        if self.min_effect <= 0:
            return 0.0
        p1 = p0 + self.min_effect if self.scale == "difference" else p0 * math.exp(self.min_effect)
        p1 = min(p1, 1.0 - 1e-9)
        return 0.5 * (p1 * math.log(p1 / p0) + (1.0 - p1) * math.log((1.0 - p1) / (1.0 - p0)))

    def result(self) -> dict[str, Any]:
        return {"statistic": self.level, "effect_size": self.effect, "support": int(self.run_n),
                "effect_unit": "nats per observation (mean log-likelihood ratio of the run)",
                "llr_per_observation": self.last_llr, "rate_reference": self.rate_reference,
                "rate_recent": self.rate_recent, **self.counts}


class MeanDropCusum(Cusum):
    """CUSUM of a *drop* of a mean (Gaussian, known variance): ``update(reference, recent, new)``.

    ``reference``: (mean, variance, n) of the reference observations; ``recent``: (sum, n) of the observations
    just before the new ones; ``new``: their values. Alternative mean: the recent mean shrunk towards the
    reference mean by ``beta`` pseudo-observations, and never above it (one-sided: content drift is fresh items
    that fit the reference *less*). ``min_effect``: the smallest drop worth filling S (an allowance of half the
    KL divergence of that drop per observation).

    >>> import random
    >>> rng = random.Random(5)
    >>> c, hits, recent = MeanDropCusum(), [], []
    >>> for t in range(200):  # cosines around 0.6 (sd 0.1); from t = 100 the mean falls to 0.45 over 100 items
    ...     x = rng.gauss(0.6 - 0.15 * min(1.0, max(0, t - 100) / 100), 0.1)
    ...     _ = c.update((0.6, 0.01, 500), (sum(recent), len(recent)), [x])
    ...     recent = (recent + [x])[-10:]
    ...     if c.statistic > 10 and not hits:
    ...         hits.append(t)
    >>> hits
    [167]
    """

    def __init__(self, beta: float = 4.0, min_reference: int = 10, min_effect: float = 0.0) -> None:
        super().__init__()
        _check("beta", beta)
        _check("min_reference", min_reference)
        _check("min_effect", min_effect, low=-1e-300)
        self.beta, self.min_reference, self.min_effect = beta, min_reference, min_effect
        self.mean_reference: float | None = None
        self.mean_recent: float | None = None

    def update(self, reference: tuple[float, float, float], recent: tuple[float, float], new: Sequence[float],
               now_ms: int | None = None) -> MeanDropCusum:
        (m0, var0, n0), (sr, nr) = reference, recent
        self.last_llr = None
        if n0 < self.min_reference or not len(new):
            return self
        var0 = max(float(var0), 1e-4)
        ma = min(m0, (sr + self.beta * m0) / (nr + self.beta))
        self.mean_reference, self.mean_recent = m0, ma
        llr = sum((x - m0) ** 2 - (x - ma) ** 2 for x in new) / (2.0 * var0)
        # allowance: half the KL divergence of a drop of min_effect, per observation (see RateCusum.allowance)
        self.step(llr - len(new) * self.min_effect ** 2 / (4.0 * var0), len(new), now_ms)
        return self

    def result(self) -> dict[str, Any]:
        return {"statistic": self.level, "effect_size": self.effect, "support": int(self.run_n),
                "effect_unit": "nats per observation (mean log-likelihood ratio of the run)",
                "llr_per_observation": self.last_llr, "mean_reference": self.mean_reference,
                "mean_recent": self.mean_recent}
