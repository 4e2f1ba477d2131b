"""Episode replay (``--replay hsnet|ifsl``): the test episodes of HSNet's and iFSL's loaders, draw for draw.

The rules re-state how each codebase's test loader picks an episode: HSNet (Min et al., ICCV 2021:
test.py with data/{pascal,coco,fss}.py) and iFSL (Kang & Cho, CVPR 2022: fs-s/ and fs-cs/
data/{pascal,coco}.py). Replaying them exactly means consuming NumPy's legacy Mersenne-Twister
stream with the same calls in the same order. Two facts of that stream matter:

- ``np.random.choice(items, 1, replace=False)`` permutes all ``len(items)`` positions and keeps the
  first, so it consumes a whole permutation. ``choice(len(items), 1, replace=False)`` consumes exactly
  the same draws, so the position is drawn here and the item looked up.
- ``np.random.choice(classes, way, replace=False, p=p)`` (iFSL's weighted way draw) is replayed with
  the same ``p``, computed with the same float operations.

The codebases draw from the global stream; here a local ``np.random.RandomState`` stands in for it,
so nothing else in the process can shift the episodes. HSNet's stream is sequential (seeded once,
episode after episode), so every plan is computed once, up front; iFSL seeds the stream with the
episode index. A benchmark supplies the lists (ReplayLists); nothing here knows a dataset.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fsbench.errors import FsbenchError

CODEBASES = ("hsnet", "ifsl")
# Both codebases' test datasets have len() 1000 (Pascal-5i's queries cycle through the list), except
# HSNet's loader for numbered images, which visits each listed test image once.
TEST_EPISODES = 1000
# HSNet's test.py calls utils.fix_randseed(0) once before its test loop.
HSNET_SEED = 0
# HSNet's loader for numbered images draws a support by its file number: choice(range(1, 11), ...).
SUPPORT_NUMBERS = range(1, 11)
QUERY_DRAWS = ("pair", "class")

# (way class ids, query image ids, support image ids per way), as EpisodePlan holds them.
Plan = tuple[tuple[int, ...], tuple[str, ...], tuple[tuple[str, ...], ...]]


@dataclass(frozen=True)
class ReplayLists:
    """What a codebase's test loader reads, in the codebase's order, from the benchmark's standard lists.

    Attributes:
        source: where the lists came from (recorded in results).
        query_pairs: the test (image id, class id) pairs in list order; queries of a "pair" draw
            benchmark are visited in this order.
        images_by_class: per class, its images in list order; supports (and the queries of a
            "class" draw benchmark) are drawn from these.
        class_order: the test classes in the codebases' order (their class-id lists are ascending).
        numbered_images: for lists whose supports are drawn by file number (per class, number n ->
            image id of file "n"), else None.
    """

    source: str
    query_pairs: tuple[tuple[str, int], ...]
    images_by_class: dict[int, tuple[str, ...]]
    class_order: tuple[int, ...]
    numbered_images: dict[int, dict[int, str]] | None = None


def check_settings(codebase: str, lists: ReplayLists, task: str, way: int, shot: int, queries: int, episodes: int) -> None:
    """Refuse, in one line, a setting the codebase's test loader never had."""
    if codebase not in CODEBASES:
        raise FsbenchError(f"unknown --replay {codebase!r}; available: {', '.join(CODEBASES)}")
    if not lists.query_pairs or not lists.class_order:
        raise FsbenchError(f"--replay {codebase}: the lists ({lists.source}) hold no test pairs")
    if queries != 1:
        raise FsbenchError(f"--replay {codebase}: its test loader has 1 query per episode, not --queries {queries}")
    if codebase == "hsnet":
        if way != 1 or task != "fss":
            raise FsbenchError(f"--replay hsnet: HSNet's test loader is 1-way FS-S, not --way {way} --task {task}")
        limit = len(lists.query_pairs) if lists.numbered_images is not None else TEST_EPISODES
    else:
        if lists.numbered_images is not None:
            raise FsbenchError(f"--replay ifsl: iFSL's code has no loader for these lists ({lists.source}); it has Pascal-5i and COCO-20i")
        if task == "fss" and way != 1:
            raise FsbenchError(f"--replay ifsl: iFSL's FS-S loader is 1-way, not --way {way} (use --task fscs for N-way)")
        classes = len(lists.class_order)
        if task == "fscs" and (classes < 2 or way > classes):
            raise FsbenchError(f"--replay ifsl: FS-CS needs at least 2 test classes and --way {way} at most their number ({classes})")
        limit = TEST_EPISODES
    if episodes > limit:
        raise FsbenchError(f"--replay {codebase}: its test loader yields {limit} episodes, not --episodes {episodes}")


def replay_plans(codebase: str, lists: ReplayLists, query_draw: str, task: str, way: int, shot: int, queries: int, episodes: int) -> list[Plan]:
    """The first ``episodes`` test episodes of ``codebase``'s loader over ``lists``.

    ``query_draw`` is the benchmark's: "pair" -> queries in list order (index modulo the list
    length), "class" -> a class uniformly from class_order, then one of its images.
    """
    check_settings(codebase, lists, task, way, shot, queries, episodes)
    if query_draw not in QUERY_DRAWS:
        raise FsbenchError(f"unknown query draw {query_draw!r}; available: {', '.join(QUERY_DRAWS)}")
    if codebase == "hsnet":
        stream = np.random.RandomState(HSNET_SEED)
        return [_hsnet_episode(stream, lists, query_draw, index, shot) for index in range(episodes)]
    # iFSL: np.random.seed(idx) at the start of every episode.
    return [_ifsl_episode(np.random.RandomState(index), lists, query_draw, index, task, way, shot) for index in range(episodes)]


def _hsnet_episode(stream: np.random.RandomState, lists: ReplayLists, query_draw: str, index: int, shot: int) -> Plan:
    query, query_class = _query(stream, lists, query_draw, index)
    if lists.numbered_images is not None:
        supports = _numbered_supports(stream, lists, query, query_class, shot)
    else:
        supports = _supports(stream, lists, query, query_class, shot, distinct=False)
    return (query_class,), (query,), (supports,)


def _ifsl_episode(stream: np.random.RandomState, lists: ReplayLists, query_draw: str, index: int, task: str, way: int, shot: int) -> Plan:
    query, query_class = _query(stream, lists, query_draw, index)
    if task == "fss":  # fs-s: HSNet's rule, per-episode seed
        return (query_class,), (query,), (_supports(stream, lists, query, query_class, shot, distinct=False),)
    # fs-cs: the query's class weighs 1/2, each other class 1/(2(C-1)); the drawn order is the ways'.
    classes = lists.class_order
    if query_class not in classes:
        raise FsbenchError(f"replay: query class {query_class} is not among the test classes {list(classes)} of {lists.source}")
    weights = np.ones([len(classes)]) / 2.0 / float(len(classes) - 1)
    weights[classes.index(query_class)] = 1 / 2.0
    positions = stream.choice(len(classes), way, p=weights, replace=False).tolist()
    ways = tuple(classes[position] for position in positions)
    supports = tuple(_supports(stream, lists, query, class_id, shot, distinct=True) for class_id in ways)
    return ways, (query,), supports


def _query(stream: np.random.RandomState, lists: ReplayLists, query_draw: str, index: int) -> tuple[str, int]:
    if query_draw == "pair":
        return lists.query_pairs[index % len(lists.query_pairs)]
    query_class = lists.class_order[_position(stream, len(lists.class_order))]
    images = lists.images_by_class.get(query_class, ())
    if not images:
        raise FsbenchError(f"replay: class {query_class} has no images in {lists.source}; the codebase's loader cannot draw its query")
    return images[_position(stream, len(images))], query_class


def _supports(stream: np.random.RandomState, lists: ReplayLists, query: str, class_id: int, shot: int, distinct: bool) -> tuple[str, ...]:
    """Draw an image of the class until ``shot`` are kept: never the query; with ``distinct`` (iFSL's
    fs-cs) never one already kept, otherwise (HSNet, fs-s) duplicates are kept."""
    images = lists.images_by_class.get(class_id, ())
    needed = shot if distinct else 1
    if len(set(images) - {query}) < needed:
        raise FsbenchError(
            f"replay: class {class_id} has {len(set(images) - {query})} images besides query {query} in {lists.source}; "
            f"the codebase's loader would draw its {shot}-shot supports forever"
        )
    kept: list[str] = []
    while len(kept) < shot:
        image = images[_position(stream, len(images))]
        if image != query and not (distinct and image in kept):
            kept.append(image)
    return tuple(kept)


def _numbered_supports(stream: np.random.RandomState, lists: ReplayLists, query: str, class_id: int, shot: int) -> tuple[str, ...]:
    """HSNet's rule for numbered images: draw a file number until it is not the query's."""
    numbered = lists.numbered_images[class_id]
    missing = [number for number in SUPPORT_NUMBERS if number not in numbered]
    if missing:
        raise FsbenchError(f"replay: class {class_id} has no image numbered {missing[0]} in {lists.source}; HSNet's loader draws supports from numbers 1..10")
    kept: list[str] = []
    while len(kept) < shot:
        image = numbered[SUPPORT_NUMBERS[_position(stream, len(SUPPORT_NUMBERS))]]
        if image != query:
            kept.append(image)
    return tuple(kept)


def _position(stream: np.random.RandomState, count: int) -> int:
    # The same draws as choice(items, 1, replace=False) over ``count`` items: a full permutation.
    return int(stream.choice(count, 1, replace=False)[0])
