"""Checkpoints: round trip, and untrusted files refused without unpickling."""
from __future__ import annotations

import pickle

import pytest
import torch

from fsbench.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from fsbench.errors import FsbenchError


def test_round_trip(tmp_path):
    state = {"network.weight": torch.randn(3, 4), "proxies.weight": torch.arange(6.0).view(2, 3)}
    save_checkpoint(tmp_path / "m.safetensors", state, {"method": "dml_knn", "config": {"backbone": "resnet18"}, "step": 5})
    loaded, metadata = load_checkpoint(tmp_path / "m.safetensors")
    assert all(torch.equal(state[key], loaded[key]) for key in state)
    assert metadata["method"] == "dml_knn" and metadata["config"]["backbone"] == "resnet18" and metadata["step"] == 5
    assert not list(tmp_path.glob("*.partial"))


def test_header_length_that_looks_like_a_pickle_is_still_read(tmp_path):
    # A safetensors file starts with its header's length; when that length's low byte is 0x80 (a
    # pickle's first byte) the file is still safetensors: the "{" after the length says so.
    for length in range(1, 400):
        path = tmp_path / f"m{length}.safetensors"
        save_checkpoint(path, {"w" * length: torch.zeros(1)}, {"method": "pfenet"})
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.fail("no key length gave the wanted header length")
    assert read_metadata(path)["method"] == "pfenet"


class Boom:
    def __reduce__(self):  # would run code if anything unpickled it
        return (open, ("/nonexistent/should-never-be-opened", "r"))


def test_pickles_are_refused_without_loading(tmp_path):
    torch_file = tmp_path / "model.pth"
    torch.save({"weight": torch.zeros(2), "payload": Boom()}, torch_file)  # zip-based torch format
    with pytest.raises(FsbenchError, match="pickled torch checkpoint"):
        read_metadata(torch_file)
    raw_pickle = tmp_path / "model.pkl"
    raw_pickle.write_bytes(pickle.dumps({"payload": 1}))
    with pytest.raises(FsbenchError, match="pickled"):
        read_metadata(raw_pickle)


@pytest.mark.parametrize("content,message", [(b"", "too short"), (b"hello world, not a checkpoint", "not a safetensors"), (b"\x05\x00\x00\x00\x00\x00\x00\x00{}xxx", "not a safetensors")])
def test_foreign_files_are_refused(tmp_path, content, message):
    path = tmp_path / "x.safetensors"
    path.write_bytes(content)
    with pytest.raises(FsbenchError, match=message):
        read_metadata(path)


def test_safetensors_without_fsbench_metadata(tmp_path):
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(FsbenchError, match="without fsbench metadata"):
        read_metadata(tmp_path / "plain.safetensors")


def test_missing_file(tmp_path):
    with pytest.raises(FsbenchError, match="not found"):
        read_metadata(tmp_path / "nothing.safetensors")


def test_a_safetensors_header_length_starting_with_0x80_is_not_taken_for_a_pickle(tmp_path):
    """A safetensors file begins with its header's length: when its low byte is 0x80 (a pickle's
    first byte) or "P" ("PK", a zip's), the file must still be read as the checkpoint it is."""
    import struct

    from fsbench.checkpoint import is_torch_pickle, load_checkpoint

    for first_byte in (0x80, ord("P")):
        for padding in range(512):
            path = tmp_path / f"model_{first_byte}.safetensors"
            save_checkpoint(path, {"weight": torch.ones(2)}, {"method": "panet", "note": "x" * padding})
            if path.read_bytes()[0] == first_byte:
                break
        else:
            raise AssertionError("no padding gave the wanted first byte")
        assert not is_torch_pickle(path)
        state, metadata = load_checkpoint(path)
        assert torch.equal(state["weight"], torch.ones(2)) and metadata["method"] == "panet"
    pickled = tmp_path / "model.pt"
    torch.save({"weight": torch.ones(2)}, pickled)
    legacy = tmp_path / "legacy.pt"
    torch.save({"weight": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    assert is_torch_pickle(pickled) and is_torch_pickle(legacy)
    assert struct.unpack("<Q", path.read_bytes()[:8])[0] < path.stat().st_size
