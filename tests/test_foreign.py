"""Foreign files are read without running anything: admitted stand-ins load, any other global is refused."""
from __future__ import annotations

import collections
import pickle

import pytest
import torch

from fsbench.errors import FsbenchError
from fsbench.foreign import StandIn, find_state_dict, read_plain_pickle, read_torch_file, strict_match, strip_prefix

RAN = []


def _record_run(*arguments):
    RAN.append(arguments)
    return 0


def test_lightning_style_file_loads_with_a_stand_in_key(tmp_path, ifsl_callbacks):
    state = collections.OrderedDict({"learner.weight": torch.arange(6.0).view(2, 3)})
    path = tmp_path / "best_model.ckpt"
    torch.save({"epoch": 4, "state_dict": state, "callbacks": {ifsl_callbacks.CustomCheckpoint: {"best_model_score": torch.tensor(50.0)}}}, path)
    loaded = read_torch_file(path)
    (key,) = loaded.content["callbacks"]
    assert issubclass(key, StandIn) and key.qualified_name == "common.callbacks.CustomCheckpoint"
    assert torch.equal(find_state_dict(loaded.content, path)["learner.weight"], state["learner.weight"])
    assert len(loaded.sha256) == 64


@pytest.mark.parametrize("legacy", [False, True])
def test_any_other_global_is_refused_and_nothing_runs(tmp_path, ifsl_callbacks, legacy):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"a": torch.ones(1)}, "payload": ifsl_callbacks.Dangerous()}, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(FsbenchError, match="refused") as caught:
        read_torch_file(path)
    assert not ifsl_callbacks.calls
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_plain_pickle_reads_data_and_refuses_globals(tmp_path):
    lists = {0: ["val2014/COCO_val2014_000000000139.jpg"], 4: ["val2014/a.jpg", "val2014/b.jpg"]}
    good = tmp_path / "fold0.pkl"
    good.write_bytes(pickle.dumps(lists))
    assert read_plain_pickle(good) == lists
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps({"x": _record_run}))
    RAN.clear()
    with pytest.raises(FsbenchError, match="names tests.test_foreign._record_run|names test_foreign._record_run"):
        read_plain_pickle(bad)
    assert not RAN
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"not a pickle at all")
    with pytest.raises(FsbenchError, match="not a readable pickle"):
        read_plain_pickle(garbage)


def test_prefix_and_strict_match(tmp_path):
    state = strip_prefix({"module.a": torch.zeros(2), "module.b": torch.zeros(3)}, "module.")
    assert set(state) == {"a", "b"}
    strict_match(state, {"a": torch.ones(2), "b": torch.ones(3)}, tmp_path / "x.pt", "hsnet")
    with pytest.raises(FsbenchError, match="1 missing .*c.*1 unexpected .*b"):
        strict_match(state, {"a": torch.ones(2), "c": torch.ones(3)}, tmp_path / "x.pt", "hsnet")
    with pytest.raises(FsbenchError, match="wrong shape"):
        strict_match(state, {"a": torch.ones(5), "b": torch.ones(3)}, tmp_path / "x.pt", "hsnet")


def test_missing_and_non_torch_files(tmp_path):
    with pytest.raises(FsbenchError, match="not found"):
        read_torch_file(tmp_path / "absent.pt")
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(FsbenchError, match="not a readable torch checkpoint"):
        read_torch_file(text)
