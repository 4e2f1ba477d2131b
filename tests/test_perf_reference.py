"""perf.reference's import isolation: a clone's ``model`` package is imported fresh inside the
context and forgotten after it, torchvision's builders never download and are restored, and the
comparison's episode carries the tensors it was given."""
from __future__ import annotations

import sys

import torch
import torchvision.models.resnet as resnet_module

from fsbench.perf.reference import authors_code, blob_masks, episode_of


def _fake_clone(root, value):
    (root / "model").mkdir(parents=True)
    (root / "model" / "__init__.py").write_text("")
    (root / "model" / "net.py").write_text(
        "from torchvision.models import resnet\n"
        f"VALUE = {value}\n"
        "def build():\n"
        "    return resnet.resnet50(pretrained=True)\n"  # the authors' call; must not download
    )


def test_each_clone_is_imported_fresh_and_forgotten(tmp_path):
    original_builder = resnet_module.resnet50
    values = []
    for index, value in enumerate((1, 2)):
        root = tmp_path / f"clone{index}"
        _fake_clone(root, value)
        with authors_code(root):
            from model import net

            values.append(net.VALUE)
            network = net.build()
        assert "model" not in sys.modules and "model.net" not in sys.modules
        assert str(root) not in sys.path
    assert values == [1, 2]  # the second clone's package, not the first one's cached
    assert resnet_module.resnet50 is original_builder
    assert isinstance(network, torch.nn.Module) and network.fc.out_features == 1000


def test_episode_of_and_masks():
    generator = torch.Generator().manual_seed(0)
    masks = blob_masks(4, 40, generator)
    assert masks.shape == (4, 40, 40) and set(masks.unique().tolist()) <= {0.0, 1.0}
    shares = masks.flatten(1).mean(dim=1)
    assert bool(((shares > 0.02) & (shares < 0.6)).all())
    query, supports = torch.randn(1, 3, 40, 40), torch.randn(2, 2, 3, 40, 40)
    episode = episode_of(query, supports, masks.view(2, 2, 40, 40))
    assert (episode.way, episode.shot, episode.num_queries) == (2, 2, 1)
    assert torch.equal(episode.support_images, supports) and torch.equal(episode.support_masks, masks.view(2, 2, 40, 40).long())
