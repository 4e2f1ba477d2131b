"""The approaches a generalized FSS run reports - one for a plain method; for a combination its
members and every combination rule - with the role each plays in the table's rows.

Roles, in table order: "novel-only" (a few-shot method: it finds only the novel classes, from the
supports), "in-classes" (a dense model trained on the base classes), "upper bound" (anything trained
on every class, --train-classes all), "combination" (a rule over two members).
"""
from __future__ import annotations

ROLES = ("novel-only", "in-classes", "upper bound", "combination")


def role_of(method, train_classes: str) -> str:
    """The role of a plain method trained on ``train_classes`` ("base" or "all")."""
    if train_classes == "all":
        return "upper bound"
    return "in-classes" if hasattr(method, "predict_vocabulary") else "novel-only"


def approaches(method, method_name: str, train_classes: str) -> dict[str, dict]:
    """{approach key: {"role", "label"}} in the order the method reports them (key "" for a plain method).

    A combination lists them with ``gfss_approaches()``: {key: {"kind": "member", "method": member,
    "name": name}} or {key: {"kind": "rule", "rule": rule, "members": (first name, second name)}}.
    """
    listed = getattr(method, "gfss_approaches", None)
    if listed is None:
        return {"": {"role": role_of(method, train_classes), "label": method_name}}
    described = {}
    for key, entry in listed().items():
        if entry["kind"] == "member":
            described[key] = {"role": role_of(entry["method"], train_classes), "label": f"{entry['name']} in {method_name}"}
        else:
            first, second = entry["members"]
            described[key] = {"role": "combination", "label": f"{entry['rule']}: {first} + {second}"}
    return described


def primary_approach(method) -> str:
    """The approach whose scores are results.json's top-level ones (a combination's chosen rule)."""
    return getattr(method, "primary_approach", "")
