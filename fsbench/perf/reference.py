"""fsbench's hsnet / asnet / asnethm against the authors' own model code, on the same weights and inputs.

    python -m fsbench.perf.reference --hsnet-root ../hsnet --ifsl-root ../ifsl [--size 400]
        [--methods hsnet asnet asnethm] [--backbones resnet50 resnet101 vgg16] [--shots 1 5]
        [--ways 1 2] [--seed 0]

Prints one row per comparison and a table; every difference should be 0 (30 + 4 comparisons at
400x400 on a 2-core CPU took about 20 minutes).

For each of HSNet (juhongm999/hsnet, model/hsnet.py), iFSL's FS-S ASNet (dahyun-kang/ifsl,
fs-s/model/asnet.py) and iFSL's fs-cs HSNet, ASNet and ASNet-HM (fs-cs/model/*.py), imported from a
clone at run time (never copied here):
1. build the authors' network with random weights (their torchvision backbone built without the
   ImageNet download; batch-norm statistics and learner weights perturbed so nothing is at its
   initial value) and save it in the release format (``nn.DataParallel(model).state_dict()`` as
   best_model.pt; a Lightning-style ``.ckpt`` with ``state_dict``);
2. load that file through fsbench's foreign-checkpoint readers (the path of ``--load``);
3. feed both the same normalised images and support masks and compare: the learner's logits (HSNet:
   upsampled 2-channel logits; iFSL: per-way log-softmax maps), the k-shot labels of the authors'
   ``predict_mask_nshot`` (HSNet's vote / iFSL's logit average) and iFSL's class presence.

iFSL's model classes subclass pytorch_lightning.LightningModule; where pytorch_lightning is not
installed a stand-in (torch.nn.Module) is used, which is all their forward and prediction need.
They also import einops (``pip install einops``).
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import types
from pathlib import Path

import torch
from tabulate import tabulate
from torch import Tensor, nn

from fsbench.episode import Episode
from fsbench.model_files import load_method
from methods.correlation.way_maps import upsample

AUTHOR_PACKAGES = ("model", "common")


@contextlib.contextmanager
def authors_code(root: Path):
    """Import context of one clone: its folder first on sys.path, its top-level packages fresh
    (HSNet and iFSL both call theirs ``model``), torchvision's ImageNet download turned off."""
    import torchvision.models.resnet as resnet_module
    import torchvision.models.vgg as vgg_module

    def forget() -> None:
        for name in list(sys.modules):
            if name.split(".")[0] in AUTHOR_PACKAGES:
                del sys.modules[name]

    originals = {(module, name): getattr(module, name) for module, name in
                 ((resnet_module, "resnet50"), (resnet_module, "resnet101"), (vgg_module, "vgg16"))}
    for (module, name), builder in originals.items():
        setattr(module, name, lambda pretrained=False, _builder=builder, **kwargs: _builder(weights=None, **kwargs))
    added_lightning = "pytorch_lightning" not in sys.modules and not _importable("pytorch_lightning")
    if added_lightning:
        sys.modules["pytorch_lightning"] = types.SimpleNamespace(LightningModule=nn.Module)
    forget()
    sys.path.insert(0, str(root))
    try:
        yield
    finally:
        sys.path.remove(str(root))
        forget()
        for (module, name), builder in originals.items():
            setattr(module, name, builder)
        if added_lightning:
            del sys.modules["pytorch_lightning"]


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def perturb(model: nn.Module, learner: nn.Module, generator: torch.Generator) -> None:
    """Move every floating parameter and batch-norm statistic off its initial value (deterministically),
    and scale the learner's last convolution's weights up: freshly initialised learners answer about 0.5
    everywhere, where an argmax or a presence threshold tells little."""
    last = [module for module in learner.modules() if isinstance(module, nn.Conv2d)][-1]
    with torch.no_grad():
        last.weight.mul_(100)
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                tensor.mul_(0.5 + torch.rand(tensor.shape, generator=generator))
            elif name.endswith("running_mean"):
                tensor.add_(0.1 * noise)
            else:
                tensor.add_(0.02 * noise * (tensor.std() if tensor.numel() > 1 else 1.0))


def blob_masks(count: int, size: int, generator: torch.Generator) -> Tensor:
    """[count, size, size] float 0/1 masks: a random ellipse each, 5-40% of the image."""
    coordinates = torch.arange(size, dtype=torch.float32)
    masks = []
    for _ in range(count):
        centre = torch.rand(2, generator=generator) * size * 0.6 + size * 0.2
        radii = torch.rand(2, generator=generator) * size * 0.25 + size * 0.12
        y, x = coordinates.view(-1, 1), coordinates.view(1, -1)
        masks.append((((y - centre[0]) / radii[0]) ** 2 + ((x - centre[1]) / radii[1]) ** 2 <= 1).float())
    return torch.stack(masks)


def episode_of(query: Tensor, supports: Tensor, masks: Tensor) -> Episode:
    """An fsbench episode from query [1, 3, H, W], supports [N, K, 3, H, W], masks [N, K, H, W] 0/1."""
    way = supports.shape[0]
    return Episode(
        support_images=supports, support_masks=masks.long(), query_images=query,
        query_masks=torch.zeros(query.shape[0], *query.shape[-2:], dtype=torch.long),
        class_ids=torch.arange(1, way + 1), query_presence=torch.zeros(query.shape[0], way, dtype=torch.bool),
    )


def random_episode(way: int, shot: int, size: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Episode]:
    """query [1, 3, S, S], supports [N, K, 3, S, S], masks [N, K, S, S] (0/1 float) and the fsbench
    episode holding them."""
    query = torch.randn(1, 3, size, size, generator=generator)
    supports = torch.randn(way, shot, 3, size, size, generator=generator)
    masks = blob_masks(way * shot, size, generator).view(way, shot, size, size)
    return query, supports, masks, episode_of(query, supports, masks)


def save_lightning(model: nn.Module, path: Path) -> Path:
    """``model``'s state as a PyTorch Lightning 1.3 checkpoint (iFSL's release format) at ``path``."""
    torch.save({"epoch": 1, "global_step": 1, "pytorch-lightning_version": "1.3.8", "state_dict": model.state_dict(),
                "callbacks": {}, "optimizer_states": [], "lr_schedulers": []}, path)
    return path


def build_hsnet(root: Path, backbone: str, generator: torch.Generator, directory: Path) -> tuple[nn.Module, Path]:
    with authors_code(root):
        from model.hsnet import HypercorrSqueezeNetwork

        model = HypercorrSqueezeNetwork(backbone, False)
    perturb(model, model.hpn_learner, generator)
    model.eval()
    path = directory / f"hsnet_{backbone}_best_model.pt"
    torch.save(nn.DataParallel(model).state_dict(), path)  # HSNet's train.py saves exactly this
    return model, path


def build_ifsl(root: Path, method: str, backbone: str, way: int, generator: torch.Generator, directory: Path) -> tuple[nn.Module, Path]:
    classes = {"hsnet": ("model.hsnet", "HypercorrSqueezeNetwork"), "asnet": ("model.asnet", "AttentiveSqueezeNetwork"),
               "asnethm": ("model.asnethm", "AttentiveSqueezeNetworkHM")}
    module_name, class_name = classes[method]
    arguments = argparse.Namespace(backbone=backbone, way=way, weak=False, shot=1, lr=1e-3, benchmark="pascal", fold=0, vis=False)
    with authors_code(root / "fs-cs"):
        import importlib

        model = getattr(importlib.import_module(module_name), class_name)(arguments)
    perturb(model, model.learner, generator)
    return model.eval(), save_lightning(model, directory / f"ifsl_{method}_{backbone}.ckpt")


def build_ifsl_fss_asnet(root: Path, backbone: str, generator: torch.Generator, directory: Path) -> tuple[nn.Module, Path]:
    """iFSL's FS-S ASNet (fs-s/model/asnet.py: 1-way, HSNet's forward and vote), saved as a Lightning .ckpt."""
    with authors_code(root / "fs-s"):
        from model.asnet import AttentiveSqueezeNetwork

        model = AttentiveSqueezeNetwork(argparse.Namespace(backbone=backbone), False)
    perturb(model, model.learner, generator)
    return model.eval(), save_lightning(model, directory / f"ifsl_fss_asnet_{backbone}.ckpt")


def compare_fss(name: str, method: str, reference: nn.Module, path: Path, backbone: str, size: int, shots: list[int],
                generator: torch.Generator, overrides: dict | None = None) -> list[list]:
    """A 1-way model with HSNet's interface (forward(query, support, mask) -> upsampled 2-channel
    logits; predict_mask_nshot with the vote) against fsbench's ``method`` loaded from ``path``."""
    ours, _ = load_method(path, method, torch.device("cpu"), overrides)
    rows = []
    for shot in shots:
        query, supports, masks, episode = random_episode(1, shot, size, generator)
        with torch.no_grad():
            reference_logits = torch.stack([reference(query, supports[:, k], masks[:, k]) for k in range(shot)])  # [K, 1, 2, H, W]
            reference_labels = reference.predict_mask_nshot({"query_img": query, "support_imgs": supports, "support_masks": masks}, shot)
            our_logits = ours.shot_logits(episode)  # [K, Q, N, 2, h, w]
            our_logits = upsample(our_logits.flatten(0, 2), (size, size)).view(shot, 1, 2, size, size)
            our_labels = ours.predict(episode).labels()
        rows.append(_row(name, backbone, 1, shot, reference_logits, our_logits, reference_labels.long(), our_labels) + ["-"])
    return rows


def compare_ifsl(root: Path, method: str, backbone: str, size: int, shots: list[int], ways: list[int],
                 generator: torch.Generator, directory: Path) -> list[list]:
    """iFSL's fs-cs model against fsbench's method loaded from its Lightning checkpoint."""
    rows = []
    for way in ways:
        reference, path = build_ifsl(root, method, backbone, way, generator, directory)
        ours, _ = load_method(path, method, torch.device("cpu"))
        for shot in shots:
            query, supports, masks, episode = random_episode(way, shot, size, generator)
            batch = {"query_img": query, "support_imgs": supports.unsqueeze(0), "support_masks": masks.unsqueeze(0),
                     "org_query_imsize": [torch.tensor([size]), torch.tensor([size])]}
            with torch.no_grad():
                reference_maps = torch.stack([reference({**batch, "support_imgs": supports[:, k].unsqueeze(0).unsqueeze(2),
                                                         "support_masks": masks[:, k].unsqueeze(0).unsqueeze(2)}) for k in range(shot)])
                reference_presence, reference_labels = reference.predict_mask_nshot(dict(batch), shot)
                our_maps = ours.shot_logits(episode).log_softmax(dim=3)  # [K, 1, N, 2, h, w], as iFSL's [K, B, N, 2, h, w]
                prediction = ours.predict(episode)
            row = _row(f"{method} (iFSL fs-cs code)", backbone, way, shot, reference_maps, our_maps, reference_labels.long(), prediction.labels())
            presence = reference_presence.bool().view(-1)
            equal = torch.equal(presence, prediction.presence.view(-1) >= 0.5)
            row.append(f"{'yes' if equal else 'NO'} ({int(presence.sum())} of {way} present)")
            rows.append(row)
    return rows


def _row(name: str, backbone: str, way: int, shot: int, reference: Tensor, ours: Tensor, reference_labels: Tensor, our_labels: Tensor) -> list:
    difference = (reference - ours).abs().max().item()
    scale = reference.abs().max().item()
    differing = int((reference_labels.view(-1) != our_labels.view(-1)).sum())
    foreground = 100 * (reference_labels > 0).float().mean().item()
    row = [name, backbone, way, shot, f"{difference:.2e}", f"{scale:.2e}", f"{foreground:.1f}", differing, reference_labels.numel()]
    print(row, flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hsnet-root", type=Path, help="a clone of juhongm999/hsnet")
    parser.add_argument("--ifsl-root", type=Path, help="a clone of dahyun-kang/ifsl")
    parser.add_argument("--backbones", nargs="+", default=["resnet50"], choices=["vgg16", "resnet50", "resnet101"])
    parser.add_argument("--methods", nargs="+", default=["hsnet", "asnet", "asnethm"], choices=["hsnet", "asnet", "asnethm"])
    parser.add_argument("--size", type=int, default=400)
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--ways", type=int, nargs="+", default=[1, 2], help="iFSL's fs-cs models")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import methods  # noqa: F401  (registers the methods and their checkpoint readers)
    if args.hsnet_root is None and args.ifsl_root is None:
        parser.error("give --hsnet-root and/or --ifsl-root")
    for flag, root, marker in (("--hsnet-root", args.hsnet_root, "model/hsnet.py"), ("--ifsl-root", args.ifsl_root, "fs-cs/model/asnet.py")):
        if root is not None and not (root / marker).is_file():
            parser.error(f"{flag}: {root / marker} not found")
    if args.ifsl_root is not None and not _importable("einops"):
        parser.error("--ifsl-root: iFSL's models import einops, which is not installed (pip install einops)")
    torch.set_grad_enabled(False)
    generator = torch.Generator().manual_seed(args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary)
        for backbone in args.backbones:
            if args.hsnet_root is not None and "hsnet" in args.methods:
                reference, path = build_hsnet(args.hsnet_root, backbone, generator, directory)
                rows += compare_fss("hsnet (HSNet code)", "hsnet", reference, path, backbone, args.size, args.shots, generator)
            if args.ifsl_root is not None and "asnet" in args.methods:
                # iFSL's FS-S ASNet evaluates k shots with HSNet's vote. Its ResNet checkpoints have
                # the keys of the fs-cs ones, which fsbench reads with iFSL's average: a user of an
                # FS-S file sets the vote (--set shot_aggregation=vote); VGG-16 files get it anyway.
                reference, path = build_ifsl_fss_asnet(args.ifsl_root, backbone, generator, directory)
                rows += compare_fss("asnet (iFSL fs-s code)", "asnet", reference, path, backbone, args.size, args.shots,
                                    generator, {"shot_aggregation": "vote"})
            if args.ifsl_root is not None and backbone != "vgg16":  # iFSL's fs-cs models are ResNet only
                for method in args.methods:
                    rows += compare_ifsl(args.ifsl_root, method, backbone, args.size, args.shots, args.ways, generator, directory)
            print(f"{backbone}: {len(rows)} comparisons so far", flush=True)
    print(tabulate(rows, headers=_HEADERS, tablefmt="github"))
    print(f"\n{args.size}x{args.size}, seed {args.seed}. logits: HSNet's upsampled 2-channel logits / iFSL's per-way "
          "log-softmax maps at the learner's size, every shot; labels: predict_mask_nshot (HSNet's vote, iFSL's average) "
          "against fsbench's Prediction.labels(); presence: iFSL's collect_class_presence (k-shot: mean >= 0.5) against fsbench's.")


_HEADERS = ["model", "backbone", "way", "shot", "max |logit difference|", "max |logit|", "foreground %", "labels differing", "pixels", "presence equal"]


if __name__ == "__main__":
    main()
