"""Per-pixel combination of two models' class probabilities, and how two different vocabularies are aligned.

Rules, for probabilities s1, s2 [Q, C, H, W] over the same channels:
- entropy: s1 (1 - H(s1)) + s2 (1 - H(s2)), H(s) = -sum_c s_c log(s_c + 1e-9) over each member's OWN
  distribution. With ``normalise`` (the default) H is divided by log(classes of that member), so each
  weight lies in [0, 1] - 1 for a one-hot answer, 0 for a uniform one - whatever the member's class
  count; the raw rule's weight 1 - H goes negative as soon as H > 1 (any pixel of a 3-class uniform
  answer), and then a confident-looking score subtracts.
- max: elementwise max(s1, s2) (fuzzy union); mean: (s1 + s2) / 2; weighted: a s1 + b s2 with fixed
  weights; intersection: elementwise min(s1, s2) (fuzzy intersection, the dual of max).

Alignment (members whose classes differ, e.g. an in-model over [background, base classes] and a
few-shot out-model over [background, novel classes]): a member's background means "none of MY
classes". Lifted into the union space [background] + (its classes and the other's), a member keeps
its probability of every class it knows; its background probability is shared among background and
the classes it does not know in the proportions the OTHER member gives them:
    lifted_m(c) = s_m(c)                                  for c a class of m,
    lifted_m(c) = s_m(bg) s_o(c) / sum_{c' in R_m} s_o(c')  for c in R_m = {bg} + classes m lacks.
Both lifted vectors are distributions over the union; members with the same classes are unchanged.
So on a base-class pixel the out-model, saying "background", hands that pixel to whichever base
class the in-model names instead of voting for background, and the other way round on novel pixels.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

RULES = ("entropy", "max", "mean", "weighted", "intersection")
# In H(s) = -sum s log(s + EPSILON), as the rule is stated.
EPSILON = 1e-9
_TINY = 1e-12


def entropy(probabilities: Tensor) -> Tensor:
    """[Q, C, H, W] -> [Q, 1, H, W]: -sum_c s_c log(s_c + 1e-9)."""
    return -(probabilities * (probabilities + EPSILON).log()).sum(dim=1, keepdim=True)


def confidence_weight(probabilities: Tensor, normalise: bool) -> Tensor:
    """[Q, C, H, W] -> [Q, 1, H, W]: 1 - H(s), with H / log(C) when ``normalise`` (C >= 2)."""
    value = entropy(probabilities)
    classes = probabilities.shape[1]
    if normalise and classes > 1:
        value = value / math.log(classes)
    return 1.0 - value


def combine(first: Tensor, second: Tensor, rule: str, first_weight: Tensor | None = None, second_weight: Tensor | None = None,
            weights: tuple[float, float] = (0.5, 0.5)) -> Tensor:
    """Scores [Q, C, H, W] of ``rule`` over two probability maps on the same channels.

    ``first_weight`` / ``second_weight`` ([Q, 1, H, W], confidence_weight of each member's own
    distribution) are needed by "entropy" only; ``weights`` by "weighted" only.
    """
    if rule == "entropy":
        if first_weight is None or second_weight is None:
            raise ValueError("the entropy rule needs both members' confidence weights")
        return first * first_weight + second * second_weight
    if rule == "max":
        return torch.maximum(first, second)
    if rule == "mean":
        return (first + second) / 2.0
    if rule == "weighted":
        return weights[0] * first + weights[1] * second
    if rule == "intersection":
        return torch.minimum(first, second)
    raise ValueError(f"unknown combination rule {rule!r}; available: {', '.join(RULES)}")


def union_classes(first: tuple[int, ...], second: tuple[int, ...]) -> tuple[int, ...]:
    """The union vocabulary: sorted class ids of either member."""
    return tuple(sorted(set(first) | set(second)))


def lift(own: Tensor, own_classes: tuple[int, ...], other: Tensor, other_classes: tuple[int, ...], classes: tuple[int, ...]) -> Tensor:
    """One member's probabilities [Q, 1 + |own|, H, W] (channel 0 background) lifted to [Q, 1 + |classes|,
    H, W] over [background] + ``classes`` (the union), its background shared as the other member's
    probabilities over {background} + the classes it lacks (see the module docstring)."""
    own_column = {class_id: column + 1 for column, class_id in enumerate(own_classes)}
    other_column = {class_id: column + 1 for column, class_id in enumerate(other_classes)}
    missing = [class_id for class_id in classes if class_id not in own_column]
    unknown = [class_id for class_id in missing if class_id not in other_column]
    if unknown:
        raise ValueError(f"classes {unknown} are known to neither member")
    # The other member's view of background and of the classes this member lacks, renormalised.
    share_columns = [0] + [other_column[class_id] for class_id in missing]
    shares = other[:, share_columns]
    shares = shares / shares.sum(dim=1, keepdim=True).clamp(min=_TINY)
    background = own[:, :1]
    channels = [background * shares[:, :1]]
    position = {class_id: index + 1 for index, class_id in enumerate(missing)}
    for class_id in classes:
        if class_id in own_column:
            channels.append(own[:, own_column[class_id] : own_column[class_id] + 1])
        else:
            channels.append(background * shares[:, position[class_id] : position[class_id] + 1])
    return torch.cat(channels, dim=1)
