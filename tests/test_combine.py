"""combine as a method: members from checkpoints (frozen, and guarded against their training classes),
joint fine-tuning, and the FS-S rule on a hand-made pair of predictions."""
from __future__ import annotations

import pytest
import torch

from fsbench.checkpoint import load_checkpoint
from fsbench.cli import main
from fsbench.engine.fit import FitSettings, fit
from fsbench.episode import Prediction
from fsbench.errors import FsbenchError
from fsbench.model_files import load_method
from fsbench.registry import METHODS
from fsbench.transforms import SquashResize
from tests.test_dml_original import write_original_checkpoint

TINY = ["--img-size", "32", "--nworker", "0", "--no-progress", "--bsz", "2", "--val-every", "0", "--checkpoint-every", "0", "--episodes", "2"]


def _combine(**settings):
    combine = METHODS.get("combine")
    config = combine.Config.quick().with_overrides({"batch_size": 2, **settings}, "combine")
    torch.manual_seed(0)
    return combine(config, "cpu")


def _fit(method, benchmark, steps: int) -> None:
    fit(method, benchmark, FitSettings(steps=steps, transform=SquashResize(32), progress=False), run_dir=None)


@pytest.fixture(scope="module")
def fold0_supervised(tiny_datapath, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "supervised"
    assert main(["--datapath", str(tiny_datapath), "--method", "supervised", "--train-steps", "1", "--logpath", str(run_dir), *TINY]) == 0
    return run_dir / "model.safetensors"


def test_a_checkpoint_member_stays_as_trained(fold0_supervised, tiny_shapes):
    method = _combine(members=(str(fold0_supervised), "panet"))
    saved, _ = load_checkpoint(fold0_supervised)
    assert [stage.name for stage in method.training_stages(_context(tiny_shapes))] == ["second.train"]
    _fit(method, tiny_shapes, steps=1)
    first = method.members[0].state_dict()
    assert all(torch.equal(first[key], saved[key]) for key in saved)
    assert method.combination_info()["members"][0]["checkpoint"] == str(fold0_supervised)


def test_a_member_from_a_foreign_weights_file_loads_as_its_method_does(tmp_path, tiny_shapes, capsys):
    """The DML repo's ckpt.pth as a member: the same weights fsbench.model_files.load_method gives,
    frozen, and a note that the file does not record its training classes."""
    write_original_checkpoint(tmp_path)
    method = _combine(members=(str(tmp_path / "ckpt.pth"), "panet"))
    alone, _ = load_method(tmp_path / "ckpt.pth", None, torch.device("cpu"))
    assert "does not record what it was trained on" in capsys.readouterr().out
    member, expected = method.members[0].state_dict(), alone.state_dict()
    assert method.specs[0]["method"] == "dml_knn" and member.keys() == expected.keys()
    assert all(torch.equal(member[key], expected[key]) for key in expected)
    assert [stage.name for stage in method.training_stages(_context(tiny_shapes))] == ["second.train"]
    assert method.checkpoint_records() == [(str(tmp_path / "ckpt.pth"), [])]


def test_a_checkpoint_member_trained_on_the_test_classes_is_refused(fold0_supervised, tiny_datapath, tmp_path, capsys):
    code = main(["--datapath", str(tiny_datapath), "--fold", "1", "--method", "combine", "--members", f"{fold0_supervised},panet",
                 "--train-steps", "0", "--logpath", str(tmp_path / "x"), *TINY])
    error = capsys.readouterr().err.strip()
    assert code == 1 and "trained on shapes fold 0" in error and "\n" not in error and not (tmp_path / "x").exists()


def test_joint_fine_tuning_moves_both_members(tiny_shapes):
    plain, joint = _combine(members=("supervised", "panet")), _combine(members=("supervised", "panet"), joint_steps=2)
    _fit(plain, tiny_shapes, steps=1)
    _fit(joint, tiny_shapes, steps=1)
    for prefix in ("first.", "second."):
        before = {key: value for key, value in plain.state_dict().items() if key.startswith(prefix) and value.is_floating_point()}
        after = joint.state_dict()
        assert any(not torch.equal(value, after[key]) for key, value in before.items()), prefix
    with pytest.raises(FsbenchError, match="episode_logits"):
        _combine(members=("supervised", "dml_knn"), joint_steps=1).training_stages(_context(tiny_shapes))


class _Fixed:
    """A member whose FS-S answer is given: fg_probs [1, 2, 1, 1] for two ways, background the rest."""

    def __init__(self, foreground):
        self.foreground = torch.tensor(foreground, dtype=torch.float64).view(1, 2, 1, 1)

    def predict(self, episode):
        return Prediction.from_probabilities(self.foreground)


def test_fss_episodes_are_combined_by_the_rule():
    """Member 1: (bg 0.7, 0.2, 0.1); member 2: (bg 0.1, 0.1, 0.8): the hand-worked pixel of
    tests/test_gfss.py, entropy-normalised: (0.23094, 0.09586, 0.36168) / 0.68848."""
    method = _combine(members=("supervised", "panet"))
    method.members = [_Fixed([0.2, 0.1]), _Fixed([0.1, 0.8])]
    prediction = method.predict(episode=None)
    total = 0.23094 + 0.09586 + 0.36168
    assert prediction.background().flatten().tolist() == pytest.approx([0.23094 / total], abs=1e-4)
    assert prediction.fg_probs.flatten().tolist() == pytest.approx([0.09586 / total, 0.36168 / total], abs=1e-4)


def _context(benchmark):
    from fsbench.engine.plan import TrainingContext

    return TrainingContext(steps=1, base_classes=benchmark.classes("train"))
