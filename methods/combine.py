"""combine: two models combined per pixel, weighted by each one's confidence.

After the in-/out-of-vocabulary study this suite answers to: a model fine-tuned on the in-vocabulary
classes and one that knows the out-of-vocabulary classes are combined pixel by pixel as
s1 (1 - H(s1)) + s2 (1 - H(s2)), s = softmax of a member's logits, H its entropy; max, mean, fixed
weights and intersection are reported beside it (methods/combination_rules.py, which also says how
two different class vocabularies are aligned). In generalized FSS (``--task gfss``) the natural pair
is a dense base model (``supervised``, over [background, in-classes]) and a few-shot method (over
[background, novel classes] from the supports); every rule and each member alone are scored on the
same queries in one run. In ordinary FS-S episodes both members answer over [background, ways] and
the configured rule combines them.

Members (``--members A,B``) are registered method names, trained here by their own stages with the
whole budget each, or weights files (fsbench checkpoints, or a foreign format a method registered,
read by fsbench.model_files), used as trained (frozen) unless joint
fine-tuning is on. Joint fine-tuning (``--set joint_steps=N``) adds an episode stage after them: the
loss is each member's cross-entropy on the query under its own [background, ways] probabilities plus
``joint_weight`` x the cross-entropy of the combined, normalised output (members need
``episode_logits``: supervised and panet have it); batch-norm layers keep their statistics.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from fsbench.engine.plan import Optimiser, ParameterGroup, StepContext, TrainingContext, TrainingStage
from fsbench.episode import Episode, Prediction
from fsbench.errors import FsbenchError
from fsbench.foreign import file_sha256
from fsbench.gfss.task import SupportSet
from fsbench.gfss.vocabulary import VocabularyPrediction, vocabulary_prediction
from fsbench.losses import cross_entropy
from fsbench.model_files import read_weights
from fsbench.provenance import records_of
from fsbench.registry import METHODS
from methods.base import Method, MethodConfig
from methods.combination_rules import RULES, combine, confidence_weight, lift, union_classes

PREFIXES = ("first", "second")
# Settings given to the combination that are passed on to each member that has them.
SHARED_SETTINGS = ("backbone", "pretrained", "lr", "batch_size", "loss")


@dataclass
class CombineConfig(MethodConfig):
    """members: two registered method names or checkpoint paths. rule: the reported rule (every rule is
    scored in generalized FSS). backbone, pretrained, lr, batch_size, loss: None keeps each member's own;
    set, they go to every member that has the setting. first_settings / second_settings: more settings
    of one member, "KEY=VALUE;KEY=VALUE". train_steps: each member's budget."""

    members: tuple[str, ...] = ("supervised", "panet")
    rule: str = "entropy"
    normalise_entropy: bool = True
    weights: tuple[float, ...] = (0.75, 0.25)
    joint_steps: int = 0
    joint_lr: float = 1e-4
    joint_weight: float = 1.0
    first_settings: str = ""
    second_settings: str = ""
    quick_profile: bool = False  # members use their quick (CPU) profiles
    # Filled when the members are built: JSON [{"method", "config", "checkpoint", "sha256"}], so that a
    # saved combination rebuilds its members without their original files.
    member_specs: str = ""
    backbone: str | None = None
    pretrained: bool | None = None
    lr: float | None = None
    batch_size: int | None = None
    loss: str | None = None
    train_steps: int = 20000

    QUICK = {"quick_profile": True, "train_steps": 400}


@METHODS.register("combine")
class Combine(Method):
    Config = CombineConfig

    def __init__(self, config: CombineConfig, device: torch.device | str = "cpu"):
        super().__init__(config, device)
        if config.rule not in RULES:
            raise FsbenchError(f"unknown combination rule {config.rule!r}; available: {', '.join(RULES)}")
        if len(config.weights) != 2:
            raise FsbenchError(f"combine: weights needs two values (one per member), got {config.weights}")
        if config.member_specs:  # a saved combination: members rebuilt from its settings, weights from its file
            resolved = [ResolvedMember(spec) for spec in json.loads(config.member_specs)]
        else:
            resolved = [_resolve(entry, settings, config)
                        for entry, settings in zip(_two(config.members), (config.first_settings, config.second_settings))]
        self.specs = [member.spec for member in resolved]
        self.members: list[Method] = []
        self.records: list[tuple[str, list[dict]]] = []
        for member_spec in resolved:
            spec = member_spec.spec
            member_class = METHODS.get(spec["method"])
            member_config = member_class.Config().with_overrides(_known(member_class.Config, spec["config"]), spec["method"])
            member = member_class(member_config, device)
            if member_spec.state is not None:
                member.load_state_dict({key: value.to(member.device) for key, value in member_spec.state.items()})
                self.records.append((spec["checkpoint"], member_spec.records))
            self.members.append(member)
        self.names = [_display_name(spec) for spec in self.specs]
        # The evaluator encodes each image once for both members when both split their prediction so.
        self.encodes_images = all(member.encodes_images for member in self.members)
        self.config = replace(config, member_specs=json.dumps(self.specs, default=list))

    # --- plumbing -----------------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        return {f"{prefix}.{name}": module for prefix, member in zip(PREFIXES, self.members) for name, module in member.modules().items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        stray = [key for key in state if not key.startswith(tuple(f"{prefix}." for prefix in PREFIXES))]
        if stray:
            raise FsbenchError(f"checkpoint holds modules this combination does not have: {stray[0].split('.')[0]!r}")
        for prefix, member in zip(PREFIXES, self.members):
            member.load_state_dict({key[len(prefix) + 1 :]: value for key, value in state.items() if key.startswith(f"{prefix}.")})

    def to(self, device: torch.device | str) -> "Combine":
        self.device = torch.device(device)
        for member in self.members:
            member.to(device)
        return self

    def valid_size(self, height: int, width: int) -> tuple[int, int]:
        """The smallest size from (height, width) up that both members take (a fixed point of theirs)."""
        size = (height, width)
        for _ in range(64):
            grown = size
            for member in self.members:
                grown = tuple(member.valid_size(*grown))
            if grown == size:
                return size
            size = grown
        raise FsbenchError(f"combine: members {self.names} take no common input size near {height}x{width}")

    def checkpoint_records(self) -> list[tuple[str, list[dict]]]:
        """(checkpoint path, its training records) of each member loaded from a file, for the guard
        that refuses testing a checkpoint on classes it was trained on."""
        return list(self.records)

    def combination_info(self) -> dict:
        """What results.json records about the combination."""
        config = self.config
        return {
            "members": [{"name": name, "method": spec["method"], "checkpoint": spec.get("checkpoint"), "sha256": spec.get("sha256")}
                        for name, spec in zip(self.names, self.specs)],
            "rule": config.rule,
            "rules_reported": list(RULES),
            "entropy": ("normalised: H(s) / log(C), C = the member's own channel count (background included), weights in [0, 1]"
                        if config.normalise_entropy else "raw: H(s) in nats, weights 1 - H(s) may be negative"),
            "weights": list(config.weights),
            "alignment": "a member's background probability is shared among background and the classes it lacks in the other member's proportions (methods/combination_rules.py)",
            "joint_steps": config.joint_steps,
        }

    # --- training -----------------------------------------------------------------------------------
    def training_stages(self, context: TrainingContext) -> list[TrainingStage]:
        """Each member's own stages (members from checkpoints are skipped: frozen), then joint
        fine-tuning when joint_steps > 0."""
        stages = []
        for prefix, member, spec in zip(PREFIXES, self.members, self.specs):
            if spec.get("checkpoint"):
                continue
            for stage in member.training_stages(context):
                stages.append(replace(stage, name=f"{prefix}.{stage.name}", eval_modules=tuple(f"{prefix}.{name}" for name in stage.eval_modules)))
        if self.config.joint_steps > 0:
            lacking = [name for name, member in zip(self.names, self.members) if not hasattr(member, "episode_logits")]
            if lacking:
                raise FsbenchError(f"combine: joint fine-tuning needs members with episode_logits (supervised, panet); {', '.join(lacking)} has none")

            def enter() -> None:
                for member in self.members:
                    for module in member.modules().values():
                        module.requires_grad_(True)

            stages.append(TrainingStage(
                name="joint",
                steps=self.config.joint_steps,
                data="episodes",
                batch_size=1,
                optimiser=Optimiser("adam", lr=self.config.joint_lr),
                parameter_groups=lambda: [
                    ParameterGroup(prefix, [parameter for module in member.modules().values() for parameter in module.parameters()])
                    for prefix, member in zip(PREFIXES, self.members)
                ],
                loss=self.joint_loss,
                enter=enter,
                # Batch-norm statistics stay those of the members' own training: one query per step
                # is too few to estimate them.
                eval_modules=tuple(self.modules()),
            ))
        return stages

    def joint_loss(self, episode: Episode, context: StepContext) -> dict[str, Tensor]:
        """Members' cross-entropies on the query plus joint_weight x the combined output's."""
        probabilities = [member.episode_logits(episode).log_softmax(dim=1).exp() for member in self.members]
        combined = self._combine_same_space(*probabilities)
        members_loss = sum(cross_entropy(p.clamp(min=1e-9).log(), episode.query_masks) for p in probabilities)
        combined_loss = cross_entropy(combined.clamp(min=1e-9).log(), episode.query_masks)
        return {"loss": members_loss + self.config.joint_weight * combined_loss, "combined": combined_loss.detach()}

    def _combine_same_space(self, first: Tensor, second: Tensor, rule: str | None = None) -> Tensor:
        """Two probability maps over the same channels -> the rule's normalised probabilities."""
        config = self.config
        scores = combine(first, second, rule or config.rule, confidence_weight(first, config.normalise_entropy),
                         confidence_weight(second, config.normalise_entropy), tuple(config.weights))
        scores = scores.clamp(min=0) + 1e-12
        return scores / scores.sum(dim=1, keepdim=True)

    # --- FS-S episodes --------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, episode: Episode) -> Prediction:
        """Both members on the (already padded) episode, over [background, ways], combined by the rule."""
        return self._combine_predictions([member.predict(episode) for member in self.members])

    @torch.no_grad()
    def encode(self, images: Tensor) -> tuple:
        """[B, 3, H, W] -> (first member's features, second member's features), each [B, ...]."""
        return tuple(member.encode(images) for member in self.members)

    @torch.no_grad()
    def predict_encoded(self, episode: Episode, support_features: tuple, query_features: tuple) -> Prediction:
        return self._combine_predictions([member.predict_encoded(episode, support, query) for member, support, query
                                          in zip(self.members, support_features, query_features)])

    def _combine_predictions(self, predictions: list[Prediction]) -> Prediction:
        probabilities = []
        for prediction in predictions:
            scores = torch.cat([prediction.background().unsqueeze(1), prediction.fg_probs], dim=1).float().clamp(min=0) + 1e-12
            probabilities.append(scores / scores.sum(dim=1, keepdim=True))
        combined = self._combine_same_space(*probabilities)
        return Prediction.from_probabilities(combined[:, 1:].contiguous(), bg_probs=combined[:, 0].contiguous())

    # --- generalized FSS ------------------------------------------------------------------------------
    @property
    def primary_approach(self) -> str:
        return f"rule:{self.config.rule}"

    def gfss_approaches(self) -> dict[str, dict]:
        members = {f"member:{prefix}": {"kind": "member", "method": member, "name": name}
                   for prefix, member, name in zip(PREFIXES, self.members, self.names)}
        rules = {f"rule:{rule}": {"kind": "rule", "rule": rule, "members": tuple(self.names)} for rule in RULES}
        return {**members, **rules}

    def vocabulary_predictions(self, query_images: Tensor, supports: SupportSet, index: int = 0) -> dict[str, VocabularyPrediction]:
        """Each member's prediction and every rule's, over [background] + the union of their classes."""
        first, second = (vocabulary_prediction(member, query_images, supports, index) for member in self.members)
        classes = union_classes(first.class_ids, second.class_ids)
        lifted_first = lift(first.probabilities, first.class_ids, second.probabilities, second.class_ids, classes)
        lifted_second = lift(second.probabilities, second.class_ids, first.probabilities, first.class_ids, classes)
        normalise = self.config.normalise_entropy
        first_weight = confidence_weight(first.probabilities, normalise)
        second_weight = confidence_weight(second.probabilities, normalise)
        predictions = {"member:first": first, "member:second": second}
        for rule in RULES:
            scores = combine(lifted_first, lifted_second, rule, first_weight, second_weight, tuple(self.config.weights))
            predictions[f"rule:{rule}"] = VocabularyPrediction.from_scores(scores, classes)
        return predictions


def _two(members) -> tuple[str, str]:
    members = tuple(members if not isinstance(members, str) else members.split(","))
    if len(members) != 2:
        raise FsbenchError(f"--members needs exactly two members (A,B), got {len(members)}: {', '.join(members)}")
    return members


def _known(config_class, values: dict) -> dict:
    names = {item.name for item in fields(config_class)}
    return {key: value for key, value in values.items() if key in names}


@dataclass
class ResolvedMember:
    """One member: its spec (method, config, checkpoint, sha256) and, from a weights file, the state
    dict and that file's training records."""

    spec: dict
    state: dict[str, Tensor] | None = None
    records: list[dict] = field(default_factory=list)


def _resolve(entry: str, settings: str, config: CombineConfig) -> ResolvedMember:
    """A member from a registered name or a weights file (fsbench's, or a foreign format a method
    registered: fsbench.model_files), with the shared and its own settings."""
    entry = entry.strip()
    shared = {key: getattr(config, key) for key in SHARED_SETTINGS if getattr(config, key) is not None}
    checkpoint, state, records = None, None, []
    if entry in METHODS and entry != "combine":
        name = entry
        member_class = METHODS.get(name)
        member_config = member_class.Config.quick() if config.quick_profile else member_class.Config()
    elif Path(entry).is_file():
        checkpoint = Path(entry)
        name, saved, state, record = read_weights(checkpoint)
        if name not in METHODS or name == "combine":
            raise FsbenchError(f"combine member {entry}: made for method {name!r}, which cannot be a member")
        if record["format"] != "fsbench":
            print(f"fsbench: note: combine member {entry} ({record['format']}) does not record what it was trained on; "
                  "the test classes must not be among its training classes", flush=True)
        records = records_of(record.get("metadata"))
        member_class = METHODS.get(name)
        member_config = member_class.Config().with_overrides(_known(member_class.Config, saved), name)
        shared["pretrained"] = False  # its weights come from the file
    else:
        available = ", ".join(name for name in METHODS.names() if name != "combine")
        raise FsbenchError(f"combine member {entry!r} is neither a registered method ({available}) nor a weights file")
    member_config = member_config.with_overrides(_known(type(member_config), shared), name)
    given = [setting for setting in settings.split(";") if setting.strip()]
    member_config = member_config.with_settings(given, name)
    spec = {"method": name, "config": asdict(member_config), "checkpoint": None, "sha256": None}
    if checkpoint is not None:
        spec.update(checkpoint=str(checkpoint), sha256=file_sha256(checkpoint))
    return ResolvedMember(spec, state, records)


def _display_name(spec: dict) -> str:
    return spec["method"] if not spec.get("checkpoint") else f"{spec['method']} ({Path(spec['checkpoint']).parent.name or spec['checkpoint']})"
