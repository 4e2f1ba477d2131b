"""--replay: fsbench's plans equal a literal re-statement of HSNet's and iFSL's test loaders.

Each ``*_as_written`` function below re-states one codebase's sampling in its own style - the global
NumPy stream, np.random.seed, np.random.choice on lists - over generated split lists, independently of
fsbench/replay.py. The sampler, fed the same lists through the real benchmark classes, must produce
the same episodes: same query, same supports in the same order, same ways in the same order.
"""
from __future__ import annotations

import glob
import json
import os
import pickle

import numpy as np
import pytest
from torch.utils.data import DataLoader

from benchmarks.base import BenchmarkOptions
from benchmarks.coco import Coco
from fsbench.fixtures import make_coco2014, make_fss, make_voc
from benchmarks.fss import Fss1000
from benchmarks.pascal import Pascal
from fsbench.cli import main
from fsbench.episode import collate_episodes
from fsbench.errors import FsbenchError
from fsbench.sampler import EpisodeSampler

FOLD = 0
PASCAL_TEST = [1, 2, 3, 4, 5]  # fold 0
COCO_TEST_INDICES = [FOLD + 4 * v for v in range(20)]  # HSNet's class_ids_val (0-based)


@pytest.fixture
def global_stream():
    """The re-statements use the global NumPy stream, as the authors' code does; restore it after."""
    state = np.random.get_state()
    yield
    np.random.set_state(state)


# --- generated data with standard lists ------------------------------------------------------------
@pytest.fixture(scope="module")
def pascal_data(tmp_path_factory):
    """A tiny VOC tree and HSNet-format lists in <datapath>/splits/pascal: every val image holds class
    (i % 5) + 1 and sometimes a second class; class 5 gets exactly 2 images (a hand-checkable class)."""
    datapath = tmp_path_factory.mktemp("pascal")
    labels = make_voc(datapath, train=8, val=30, height=40, width=48)
    rng = np.random.default_rng(7)
    lines = []
    for index, image_id in enumerate(labels["val"]):
        classes = {index % 4 + 1}
        if rng.random() < 0.5:
            classes.add(int(rng.integers(1, 5)))
        lines += [f"{image_id}__{class_id:02d}" for class_id in sorted(classes)]
    val_ids = list(labels["val"])
    lines.insert(3, f"{val_ids[3]}__05")
    lines.append(f"{val_ids[20]}__05")
    splits = datapath / "splits" / "pascal"
    (splits / "trn").mkdir(parents=True)
    (splits / "val").mkdir()
    train_ids = list(labels["train"])
    for fold in range(4):
        (splits / f"trn/fold{fold}.txt").write_text("".join(f"{train_ids[i]}__{5 * fold + 1 + i % 5:02d}\n" for i in range(8)))
        (splits / f"val/fold{fold}.txt").write_text("".join(f"{line[:-2]}{5 * fold + int(line[-2:]):02d}\n" for line in lines))
    return datapath, lines


@pytest.fixture(scope="module")
def coco_data(tmp_path_factory):
    """A COCO2014 index (no image files) and HSNet-format pickled lists: each test class lists 6..12
    val images in a random order."""
    datapath = tmp_path_factory.mktemp("coco")
    instances = make_coco2014(datapath, train=10, val=40, height=24, width=32, write_images=False)
    val_names = [f"val2014/{image['file_name']}" for image in instances["val"]["images"]]
    train_names = [f"train2014/{image['file_name']}" for image in instances["train"]["images"]]
    rng = np.random.default_rng(11)
    val_lists = {index: [] for index in range(80)}
    for index in COCO_TEST_INDICES:
        count = int(rng.integers(6, 13))
        val_lists[index] = [val_names[position] for position in rng.permutation(len(val_names))[:count]]
    train_lists = {index: ([] if index in COCO_TEST_INDICES else [train_names[index % 10]]) for index in range(80)}
    for folder, lists in (("val", val_lists), ("trn", train_lists)):
        (datapath / "splits/coco" / folder).mkdir(parents=True)
        (datapath / f"splits/coco/{folder}/fold{FOLD}.pkl").write_bytes(pickle.dumps(lists))
    return datapath, val_lists


@pytest.fixture(scope="module")
def fss_data(tmp_path_factory):
    """FSS-1000 with 12 classes of 10 numbered images; test.txt lists its classes unsorted."""
    datapath = tmp_path_factory.mktemp("fss")
    names = make_fss(datapath, classes=12, per_class=10, size=16)
    splits = datapath / "splits" / "fss"
    splits.mkdir(parents=True)
    (splits / "trn.txt").write_text("\n".join(names[:7]) + "\n")
    (splits / "val.txt").write_text("\n".join(names[7:9]) + "\n")
    (splits / "test.txt").write_text("\n".join([names[11], names[9], names[10]]) + "\n")
    return datapath, [names[11], names[9], names[10]]


def _plans(sampler: EpisodeSampler) -> list:
    return [(plan.class_ids, plan.query_ids, plan.support_ids) for plan in map(sampler.plan, range(len(sampler)))]


# --- the codebases' rules, as written (global stream) -----------------------------------------------
def _supports_as_written(images, query_name, shot, distinct):
    support_names = []
    while True:  # keep sampling support set if query == support
        support_name = np.random.choice(images, 1, replace=False)[0]
        if query_name != support_name and not (distinct and support_name in support_names):
            support_names.append(support_name)
        if len(support_names) == shot:
            break
    return tuple(str(name) for name in support_names)


def hsnet_pascal_as_written(lines, shot, episodes):
    metadata = [[line.split("__")[0], int(line.split("__")[1]) - 1] for line in lines]
    classwise = {class_id: [] for class_id in range(20)}
    for name, class_id in metadata:
        classwise[class_id] += [name]
    np.random.seed(0)  # test.py: utils.fix_randseed(0)
    result = []
    for idx in range(episodes):
        idx %= len(metadata)
        query_name, class_sample = metadata[idx]
        supports = _supports_as_written(classwise[class_sample], query_name, shot, distinct=False)
        result.append(((class_sample + 1,), (query_name,), (supports,)))
    return result


def ifsl_pascal_as_written(lines, task, way, shot, episodes):
    metadata = [[line.split("__")[0], int(line.split("__")[1])] for line in lines]  # fs-cs: classes 1..20
    classwise = {class_id: [] for class_id in range(1, 21)}
    for name, class_id in metadata:
        classwise[class_id] += [name]
    class_ids = [FOLD * 5 + i for i in range(1, 6)]
    result = []
    for idx in range(episodes):
        np.random.seed(idx)
        idx %= len(metadata)
        query_name, query_class = metadata[idx]
        if task == "fss":
            result.append(((query_class,), (query_name,), (_supports_as_written(classwise[query_class], query_name, shot, False),)))
            continue
        result.append(_ifsl_fscs_ways(classwise, class_ids, query_name, query_class, way, shot, lambda c: c))
    return result


def _ifsl_fscs_ways(classwise, class_ids, query_name, query_class, way, shot, to_fsbench):
    p = np.ones([len(class_ids)]) / 2. / float(len(class_ids) - 1)
    p[class_ids.index(query_class)] = 1 / 2.
    support_classes = np.random.choice(class_ids, way, p=p, replace=False).tolist()
    supports = tuple(_supports_as_written(classwise[c], query_name, shot, distinct=True) for c in support_classes)
    return tuple(to_fsbench(c) for c in support_classes), (to_fsbench_name(query_name),), tuple(tuple(map(to_fsbench_name, s)) for s in supports)


def to_fsbench_name(name) -> str:
    return str(name).split("/", 1)[1] if str(name).startswith(("val2014/", "train2014/")) else str(name)


def hsnet_coco_as_written(classwise, shot, episodes):
    np.random.seed(0)
    result = []
    for _ in range(episodes):
        class_sample = np.random.choice(COCO_TEST_INDICES, 1, replace=False)[0]
        query_name = np.random.choice(classwise[class_sample], 1, replace=False)[0]
        supports = _supports_as_written(classwise[class_sample], query_name, shot, distinct=False)
        result.append(((int(class_sample) + 1,), (to_fsbench_name(query_name),), (tuple(map(to_fsbench_name, supports)),)))
    return result


def ifsl_coco_as_written(classwise_from_zero, task, way, shot, episodes):
    classwise = {key + 1: names for key, names in classwise_from_zero.items()}  # fs-cs shifts to 1..80
    class_ids = [FOLD + 4 * v + 1 for v in range(20)]
    result = []
    for idx in range(episodes):
        np.random.seed(idx)
        query_class = np.random.choice(class_ids, 1, replace=False)[0]
        query_name = np.random.choice(classwise[query_class], 1, replace=False)[0]
        if task == "fss":
            supports = _supports_as_written(classwise[query_class], query_name, shot, distinct=False)
            result.append(((int(query_class),), (to_fsbench_name(query_name),), (tuple(map(to_fsbench_name, supports)),)))
            continue
        result.append(_ifsl_fscs_ways(classwise, class_ids, query_name, int(query_class), way, shot, int))
    return result


def hsnet_fss_as_written(datapath, test_names, shot, class_id_of_name):
    base = os.path.join(str(datapath), "FSS-1000")
    metadata = []
    for category in sorted(test_names):
        for path in sorted(glob.glob("%s/*" % os.path.join(base, category))):
            if os.path.basename(path).split(".")[1] == "jpg":
                metadata.append(path)
    np.random.seed(0)
    result = []

    def fsbench_id(path):
        return os.path.relpath(path, base)[: -len(".jpg")]

    for idx in range(len(metadata)):
        query_name = metadata[idx]
        support_names = []
        while True:
            number = np.random.choice(range(1, 11), 1, replace=False)[0]
            support_name = os.path.join(os.path.dirname(query_name), str(number)) + ".jpg"
            if query_name != support_name:
                support_names.append(support_name)
            if len(support_names) == shot:
                break
        category = query_name.split("/")[-2]
        result.append(((class_id_of_name[category],), (fsbench_id(query_name),), (tuple(map(fsbench_id, support_names)),)))
    return result


# --- the comparisons ------------------------------------------------------------------------------------
@pytest.mark.parametrize("shot", [1, 5])
def test_hsnet_pascal(pascal_data, global_stream, shot):
    datapath, lines = pascal_data
    sampler = EpisodeSampler(Pascal(datapath, FOLD), "test", shot=shot, episodes=1000, replay="hsnet")
    assert _plans(sampler) == hsnet_pascal_as_written(lines, shot, 1000)
    # Hand-worked: queries walk the list in file order; class 5 has exactly two images, so each of its
    # queries gets the other one as every support (HSNet keeps duplicates).
    class_five = [line.split("__")[0] for line in lines if line.endswith("__05")]
    for index in range(2 * len(lines)):
        plan = sampler.plan(index)
        assert (plan.query_ids[0], plan.class_ids[0]) == (lines[index % len(lines)].split("__")[0], int(lines[index % len(lines)][-2:]))
        if plan.class_ids == (5,):
            assert plan.support_ids == ((next(image for image in class_five if image != plan.query_ids[0]),) * shot,)


@pytest.mark.parametrize("task,way,shot", [("fss", 1, 1), ("fss", 1, 5), ("fscs", 1, 1), ("fscs", 2, 1), ("fscs", 3, 1)])
def test_ifsl_pascal(pascal_data, global_stream, task, way, shot):
    datapath, lines = pascal_data
    sampler = EpisodeSampler(Pascal(datapath, FOLD), "test", way=way, shot=shot, episodes=1000, task=task, replay="ifsl")
    expected = ifsl_pascal_as_written(lines, task, way, shot, 1000)
    assert _plans(sampler) == expected
    if task == "fscs":
        if way > 1:  # the ways keep the drawn order, not a sorted one
            assert {plan[0][0] < plan[0][1] for plan in expected} == {True, False}
        assert all(len(set(supports)) == shot for plan in expected for supports in plan[2])  # no duplicates


@pytest.mark.parametrize("shot", [1, 5])
def test_hsnet_coco(coco_data, global_stream, shot):
    datapath, val_lists = coco_data
    sampler = EpisodeSampler(Coco(datapath, FOLD), "test", shot=shot, episodes=1000, replay="hsnet")
    assert _plans(sampler) == hsnet_coco_as_written(val_lists, shot, 1000)


@pytest.mark.parametrize("task,way,shot", [("fss", 1, 1), ("fss", 1, 5), ("fscs", 2, 1), ("fscs", 2, 5), ("fscs", 3, 1)])
def test_ifsl_coco(coco_data, global_stream, task, way, shot):
    datapath, val_lists = coco_data
    sampler = EpisodeSampler(Coco(datapath, FOLD), "test", way=way, shot=shot, episodes=1000, task=task, replay="ifsl")
    assert _plans(sampler) == ifsl_coco_as_written(val_lists, task, way, shot, 1000)


@pytest.mark.parametrize("shot", [1, 5])
def test_hsnet_fss(fss_data, global_stream, shot):
    datapath, test_names = fss_data
    benchmark = Fss1000(datapath, 0)
    class_id_of_name = {name: class_id for class_id, name in benchmark.class_names.items()}
    sampler = EpisodeSampler(benchmark, "test", shot=shot, episodes=30, replay="hsnet")
    assert _plans(sampler) == hsnet_fss_as_written(datapath, test_names, shot, class_id_of_name)
    # Hand-worked: classes sorted by name, files in text order 1, 10, 2, ..., 9.
    first = sorted(test_names)[0]
    assert [sampler.plan(i).query_ids[0] for i in range(10)] == [f"{first}/{n}" for n in (1, 10, 2, 3, 4, 5, 6, 7, 8, 9)]


def test_replay_leaves_the_global_stream_alone_and_is_fingerprinted(pascal_data):
    datapath, _ = pascal_data
    benchmark = Pascal(datapath, FOLD)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    hsnet = EpisodeSampler(benchmark, "test", episodes=50, replay="hsnet")
    assert np.array_equal(np.random.get_state()[1], before)
    ifsl = EpisodeSampler(benchmark, "test", episodes=50, replay="ifsl")
    own = EpisodeSampler(benchmark, "test", episodes=50)
    assert len({hsnet.fingerprint(), ifsl.fingerprint(), own.fingerprint()}) == 3
    # A prefix of the codebase's 1000 episodes is the same episodes.
    assert _plans(EpisodeSampler(benchmark, "test", episodes=1000, replay="hsnet"))[:50] == _plans(hsnet)


def test_settings_the_codebases_never_had_are_refused(pascal_data, fss_data, coco_data, tiny_shapes):
    pascal = Pascal(pascal_data[0], FOLD)
    refusals = [
        (pascal, dict(queries=2, replay="hsnet"), "1 query per episode, not --queries 2"),
        (pascal, dict(way=2, task="fscs", replay="hsnet"), "HSNet's test loader is 1-way FS-S, not --way 2 --task fscs"),
        (pascal, dict(way=2, task="fss", replay="ifsl"), "iFSL's FS-S loader is 1-way"),
        (pascal, dict(episodes=1001, replay="ifsl"), "yields 1000 episodes, not --episodes 1001"),
        (pascal, dict(replay="pfenet"), "unknown --replay 'pfenet'; available: hsnet, ifsl"),
        (Fss1000(fss_data[0], 0), dict(replay="ifsl"), "iFSL's code has no loader for these lists"),
        (Fss1000(fss_data[0], 0), dict(episodes=31, replay="hsnet"), "yields 30 episodes, not --episodes 31"),
        (tiny_shapes, dict(replay="hsnet"), "has no HSNet or iFSL lists to replay"),
    ]
    for benchmark, settings, message in refusals:
        with pytest.raises(FsbenchError, match=message.replace("(", r"\(").replace(")", r"\)")):
            EpisodeSampler(benchmark, "test", **{"episodes": 10, **settings})
    with pytest.raises(FsbenchError, match="reproduces test episodes; the train split"):
        EpisodeSampler(pascal, "train", episodes=10, replay="hsnet")
    # iFSL's fs-cs loop wants 5 distinct supports besides the query: class 5 has 2 images, so its
    # loader would never finish; fsbench says so instead.
    with pytest.raises(FsbenchError, match="class 5 has 1 images besides query .* draw its 5-shot supports forever"):
        EpisodeSampler(pascal, "test", way=2, shot=5, task="fscs", episodes=1000, replay="ifsl")


def test_lists_built_from_masks_cannot_be_replayed(tmp_path):
    make_voc(tmp_path, train=6, val=10)
    with pytest.raises(FsbenchError, match="--replay needs HSNet's Pascal lists .* built from masks"):
        EpisodeSampler(Pascal(tmp_path, FOLD), "test", episodes=10, replay="hsnet")


def test_replayed_episodes_load_identically_with_any_worker_count(pascal_data):
    sampler = EpisodeSampler(Pascal(pascal_data[0], FOLD), "test", shot=2, episodes=6, replay="hsnet")

    def collect(workers):
        loader = DataLoader(sampler, batch_size=2, num_workers=workers, collate_fn=collate_episodes)
        return [(episode.query_ids, episode.support_ids, episode.support_masks.sum().item()) for batch in loader for episode in batch]

    reference = collect(0)
    assert reference == collect(2)
    assert [(ids, supports) for ids, supports, _ in reference] == [([plan[1][0]], [list(plan[2][0])]) for plan in _plans(sampler)]


def test_command_line_records_the_replay(pascal_data, tmp_path, capsys):
    datapath, _ = pascal_data
    common = ["--method", "mtl_unet", "--benchmark", "pascal", "--datapath", str(datapath), "--backbone", "resnet18", "--pretrained", "false",
              "--train-steps", "0", "--episodes", "3", "--img-size", "64", "--nworker", "0", "--no-progress"]
    assert main([*common, "--replay", "hsnet", "--logpath", str(tmp_path / "run")]) == 0
    results = json.loads((tmp_path / "run/results.json").read_text())
    config = json.loads((tmp_path / "run/config.json").read_text())
    assert results["replay"] == config["replay"] == "hsnet" and results["boundary"] == "ignore"
    expected = EpisodeSampler(Pascal(datapath, FOLD), "test", episodes=3, replay="hsnet").fingerprint()
    assert results["episode_fingerprint"] == expected
    assert main([*common, "--replay", "hsnet", "--queries", "2", "--logpath", str(tmp_path / "refused")]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert error == ["fsbench: error: --replay hsnet: its test loader has 1 query per episode, not --queries 2"]
    assert not (tmp_path / "refused").exists()
