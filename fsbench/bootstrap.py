"""Episode-level statistics for tables: bootstrap intervals and paired significance tests.

A run's scores are ratios of sums over all its episodes (class-accumulated mIoU, FB-IoU from the
background/foreground sums, ER from exact presence vectors), so the bootstrap resamples whole episodes
with replacement and recomputes those ratios from the resampled sums - never a mean of per-episode
scores. Resampling is expressed as a [resamples, episodes] matrix of multiplicities, which turns every
replicate into one matrix product.

The resampling is stratified by class. mIoU averages over the fold's classes, and a resample that
happens to miss every episode of a class scores that class 0; on short runs (40 episodes over 20
classes) that alone drags the replicates below the estimate, and the interval can exclude it. So each
episode belongs to one stratum, a stratum of n episodes is resampled n times from itself, and every
class shown in some query of the run stays in every resample (episode_strata says how N-way episodes
are assigned). The strata depend only on the episodes (their classes and ground-truth presence), never
on predictions, so runs on the same episodes get the same resamples and the paired bootstrap stays
paired. Price: a stratum of n episodes carries (n - 1) / n of its variance and a one-episode stratum
none, so on runs with one or two episodes per class the interval is narrower than an unstratified one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

METRICS = ("miou", "fbiou", "er")
METRIC_LABELS = {"miou": "mIoU", "fbiou": "FB-IoU", "er": "ER"}

Seed = int | Sequence[int]


@dataclass
class EpisodeCounts:
    """Per-episode sums of one run, episodes in increasing episode index.

    Attributes:
        episode_index: [E] int, the sampler's episode index.
        class_names: the fold's C classes, in the order of the class columns (mIoU averages over them).
        class_intersection, class_union: [E, C] pixel sums of each class over the episode's queries.
        fb_intersection, fb_union: [E, 2] background (column 0) and foreground (column 1) sums.
        exact: [E] queries whose whole presence vector was predicted right.
        queries: [E] queries in the episode.
        class_present: [E, C] bool, class c is one of the episode's ways and present (ground truth) in
            at least one of its queries; what the bootstrap strata are built from.
    """

    episode_index: np.ndarray
    class_names: list[str]
    class_intersection: np.ndarray
    class_union: np.ndarray
    fb_intersection: np.ndarray
    fb_union: np.ndarray
    exact: np.ndarray
    queries: np.ndarray
    class_present: np.ndarray

    @property
    def episodes(self) -> int:
        return len(self.episode_index)


def scores_from_sums(
    class_intersection: np.ndarray,
    class_union: np.ndarray,
    fb_intersection: np.ndarray,
    fb_union: np.ndarray,
    exact: np.ndarray,
    queries: np.ndarray,
    metric: str,
) -> np.ndarray:
    """One metric, in percent, from summed counts; leading dimensions are kept ([..., C], [..., 2], [...]).

    A class with an empty union scores 0 and still counts in the mean, exactly as FSSIoU does.
    """
    if metric == "miou":
        ratio = np.divide(class_intersection, class_union, out=np.zeros_like(class_intersection), where=class_union > 0)
        return 100.0 * ratio.mean(axis=-1)
    if metric == "fbiou":
        ratio = np.divide(fb_intersection, fb_union, out=np.zeros_like(fb_intersection), where=fb_union > 0)
        return 100.0 * ratio.mean(axis=-1)
    if metric == "er":
        return 100.0 * np.divide(exact, queries, out=np.zeros_like(exact), where=queries > 0)
    raise ValueError(f"unknown metric {metric!r}; available: {', '.join(METRICS)}")


def weighted_scores(counts: EpisodeCounts, metric: str, weights: np.ndarray) -> np.ndarray:
    """The metric for each row of ``weights`` ([B, E] episode multiplicities) -> [B]."""
    return weighted_scores_all(counts, weights, (metric,))[metric]


def weighted_scores_all(counts: EpisodeCounts, weights: np.ndarray, metrics: Sequence[str] = METRICS) -> dict[str, np.ndarray]:
    """Several metrics for each row of ``weights`` from one matrix product (the costly step)."""
    classes = len(counts.class_names)
    stacked = np.column_stack([
        counts.class_intersection, counts.class_union, counts.fb_intersection, counts.fb_union, counts.exact, counts.queries,
    ])
    sums = weights @ stacked  # [B, 2C + 6]
    parts = np.split(sums, np.cumsum([classes, classes, 2, 2, 1]), axis=1)
    class_intersection, class_union, fb_intersection, fb_union, exact, queries = parts
    return {
        metric: scores_from_sums(class_intersection, class_union, fb_intersection, fb_union, exact[:, 0], queries[:, 0], metric)
        for metric in metrics
    }


def point_score(counts: EpisodeCounts, metric: str) -> float:
    """The metric over all episodes once (what results.json holds)."""
    return float(weighted_scores(counts, metric, np.ones((1, counts.episodes)))[0])


def episode_scores(counts: EpisodeCounts, metric: str) -> np.ndarray:
    """[E] the metric of each episode on its own (for rank tests; classes absent from it are left out).

    For mIoU an episode's score is its pooled IoU over its ways, sum I / sum U, because averaging over
    the fold's classes would count every class the episode does not contain as 0.
    """
    if metric == "miou":
        intersection, union = counts.class_intersection.sum(axis=1), counts.class_union.sum(axis=1)
        return 100.0 * np.divide(intersection, union, out=np.ones_like(intersection), where=union > 0)
    return scores_from_sums(
        counts.class_intersection, counts.class_union, counts.fb_intersection, counts.fb_union,
        counts.exact, counts.queries, metric,
    )


def episode_strata(class_present: np.ndarray) -> np.ndarray:
    """[E] int: the bootstrap stratum of each episode, from ``class_present`` [E, C] bool.

    1-way: an episode's stratum is its class (column index c). N-way: in episode order, each episode
    goes to the stratum of the present class that has the fewest episodes so far (ties: the lower
    column), which keeps strata near equal. A present class left with an empty stratum (every episode
    showing it went to another class) then has its first such episode made a stratum of its own,
    always drawn, unless an earlier one already shows it (classes in column order); such strata are
    numbered C + 1, C + 2, ... Episodes where no class is present share stratum C. So every class
    present somewhere is in every resample: its stratum draws only episodes showing it, or an
    always-drawn episode shows it.
    """
    present = np.asarray(class_present, dtype=bool)
    episodes, classes = present.shape
    shown = present.sum(axis=1)
    # At most one class per episode (1-way): no choice to make, so no loop over episodes.
    strata = np.where(shown == 1, present.argmax(axis=1), classes).astype(np.int64)
    if (shown > 1).any():
        assigned = np.zeros(classes, dtype=np.int64)
        episode_of, class_of = np.nonzero(present)  # row-major: each episode's classes in column order
        for episode, start in zip(*np.unique(episode_of, return_index=True)):
            members = class_of[start : start + shown[episode]]
            chosen = members[np.argmin(assigned[members])]  # argmin takes the first of ties: the lower column
            strata[episode] = chosen
            assigned[chosen] += 1
    own = classes + 1
    for class_index in range(classes):
        showing = np.flatnonzero(present[:, class_index])
        if len(showing) == 0 or (strata == class_index).any() or (strata[showing] > classes).any():
            continue
        strata[showing[0]] = own
        own += 1
    return strata


def resample_weights(strata: np.ndarray, resamples: int, seed: Seed) -> np.ndarray:
    """[resamples, episodes] float: how often each episode is drawn in each stratified bootstrap resample.

    With ``rng = np.random.default_rng(seed)``, the strata of ``strata`` [E] (episode_strata) are taken
    in increasing order; a stratum of n episodes (in episode index order) draws
    ``rng.integers(0, n, size=(resamples, n))`` and row b of that draw picks resample b's n episodes
    of it. So a stratum of n episodes is resampled n times from itself. Two runs on the same episodes
    with the same seed get the same resamples, which keeps the paired bootstrap paired.
    """
    strata = np.asarray(strata)
    rng = np.random.default_rng(seed)
    multiplicities = np.zeros((resamples, len(strata)), dtype=np.float64)
    for stratum in np.unique(strata):  # sorted
        members = np.flatnonzero(strata == stratum)
        size = len(members)
        draws = rng.integers(0, size, size=(resamples, size))
        draws += (np.arange(resamples) * size)[:, None]
        multiplicities[:, members] = np.bincount(draws.ravel(), minlength=resamples * size).reshape(resamples, size)
    return multiplicities


def run_resample_weights(counts: EpisodeCounts, resamples: int, seed: Seed) -> np.ndarray:
    """resample_weights of one run, stratified by its classes."""
    return resample_weights(episode_strata(counts.class_present), resamples, seed)


def bootstrap_replicates(counts: EpisodeCounts, metric: str, resamples: int = 1000, seed: Seed = 0) -> np.ndarray:
    """[resamples] the metric recomputed on episode-resampled copies of the run."""
    return weighted_scores(counts, metric, run_resample_weights(counts, resamples, seed))


def bootstrap_replicates_all(counts: EpisodeCounts, resamples: int = 1000, seed: Seed = 0) -> dict[str, np.ndarray]:
    """bootstrap_replicates for every metric at once, from the same resamples."""
    return weighted_scores_all(counts, run_resample_weights(counts, resamples, seed))


def interval_from_replicates(replicates: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval: the (1-confidence)/2 and (1+confidence)/2 quantiles (numpy's linear rule)."""
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(replicates, [tail, 100.0 - tail])
    return float(low), float(high)


def bootstrap_interval(
    counts: EpisodeCounts, metric: str, resamples: int = 1000, confidence: float = 0.95, seed: Seed = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of one run's metric, resampling episodes with replacement."""
    return interval_from_replicates(bootstrap_replicates(counts, metric, resamples, seed), confidence)


def paired_bootstrap_p_value(first_replicates: np.ndarray, second_replicates: np.ndarray) -> float:
    """Two-sided p-value for "first and second score the same", from paired replicates.

    The replicates must come from the same resamples of the same episodes. p is twice the share of
    resampled differences on the far side of zero (capped at 1), so p < 0.05 exactly when the 95%
    percentile interval of the difference excludes zero. With B resamples the smallest p is 0, read
    as "< 1/B".
    """
    difference = np.asarray(first_replicates) - np.asarray(second_replicates)
    at_most_zero = float(np.mean(difference <= 0))
    at_least_zero = float(np.mean(difference >= 0))
    return min(1.0, 2.0 * min(at_most_zero, at_least_zero))


def wilcoxon_p_value(first_scores: np.ndarray, second_scores: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value on paired per-episode scores (scipy)."""
    from scipy.stats import wilcoxon

    difference = np.asarray(first_scores) - np.asarray(second_scores)
    if not np.any(difference != 0):
        return 1.0  # identical scores everywhere: no evidence of a difference (scipy would raise)
    return float(wilcoxon(first_scores, second_scores).pvalue)


@dataclass
class PairedResult:
    difference: float  # first minus second, percentage points
    p_value: float
    test: str


TESTS = ("bootstrap", "wilcoxon")


def paired_test(
    first: EpisodeCounts, second: EpisodeCounts, metric: str, test: str = "bootstrap", resamples: int = 1000, seed: Seed = 0
) -> PairedResult:
    """Paired significance test of two runs evaluated on the same episodes.

    ``test`` is "bootstrap" (paired bootstrap of the class-accumulated metric, the default) or
    "wilcoxon" (signed-rank test on per-episode scores).
    """
    same_episodes = first.episodes == second.episodes and np.array_equal(first.episode_index, second.episode_index)
    if not same_episodes or not np.array_equal(first.class_present, second.class_present):
        raise ValueError("a paired test needs two runs over the same episodes")
    difference = point_score(first, metric) - point_score(second, metric)
    if test == "bootstrap":
        weights = run_resample_weights(first, resamples, seed)  # the same resamples for both runs
        p_value = paired_bootstrap_p_value(weighted_scores(first, metric, weights), weighted_scores(second, metric, weights))
    elif test == "wilcoxon":
        p_value = wilcoxon_p_value(episode_scores(first, metric), episode_scores(second, metric))
    else:
        raise ValueError(f"unknown test {test!r}; available: {', '.join(TESTS)}")
    return PairedResult(difference, p_value, test)
