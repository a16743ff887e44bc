"""Metrics grouped by the five elements of interpretability for medical imaging.

Wang, Karaman, Kim, Rosenthal, Saluja, Young, Sabuncu, "A Framework for Interpretability in
Machine Learning for Medical Imaging", IEEE Access 12 (2024), arXiv 2310.01685, name five
elements: localization, visual recognizability, physical attribution, model transparency and
actionability. The assignment of benchbox's metrics to them is ours (one table, ``GROUP_OF``);
a metric it does not list (an adapter such as ``quantus:…``, a user's ``module:Class``) goes
under ``other``. Tables and report.html are organised by these groups.

Also here: which methods are controls (drawn as reference lines) and which metric outputs are
diagnostics rather than scores (left out of ranks and tests).
"""

from __future__ import annotations

__all__ = [
    "CONTROL_METHODS",
    "GROUPS",
    "GROUP_OF",
    "Group",
    "group_of",
    "is_control",
]


class Group:
    """One element of interpretability: its key, its title and what its metrics ask."""

    def __init__(self, key: str, title: str, question: str):
        self.key, self.title, self.question = key, title, question

    def __repr__(self) -> str:
        return f"Group({self.key!r})"


GROUPS: tuple[Group, ...] = (
    Group(
        "localization",
        "Localization",
        "Does the map point at the region that carries the finding (the ground-truth mask)?",
    ),
    Group(
        "visual_recognizability",
        "Visual recognizability",
        "Is the map concentrated enough for a reader to recognise what it highlights?",
    ),
    Group(
        "physical_attribution",
        "Physical attribution",
        "Do the highlighted pixels drive the model's output (faithfulness under removal)?",
    ),
    Group(
        "model_transparency",
        "Model transparency",
        "Does the map depend on the model's weights, its training labels and the explained "
        "class (randomization sanity checks)?",
    ),
    Group(
        "actionability",
        "Actionability",
        "Is the map stable under small input changes and attacks, so that one can act on it "
        "(robustness)?",
    ),
    Group("other", "Other", "Metrics outside the built-in table (adapters, your own)."),
)

_BY_KEY = {g.key: g for g in GROUPS}

GROUP_OF: dict[str, str] = {
    **dict.fromkeys(
        [
            "pointing_game",
            "energy_pointing_game",
            "relevance_mass",
            "relevance_rank",
            "topk_intersection",
            "auroc",
            "auprc",
            "iou",
            "dice",
        ],
        "localization",
    ),
    **dict.fromkeys(["sparseness", "complexity", "effective_complexity"], "visual_recognizability"),
    **dict.fromkeys(
        [
            "deletion",
            "insertion",
            "pixel_flipping",
            "region_perturbation",
            "road",
            "faithfulness_correlation",
            "infidelity",
        ],
        "physical_attribution",
    ),
    **dict.fromkeys(
        ["model_randomization", "data_randomization", "random_logit", "repeatability"],
        "model_transparency",
    ),
    **dict.fromkeys(
        ["max_sensitivity", "avg_sensitivity", "local_lipschitz", "fragility", "manipulation"],
        "actionability",
    ),
}

# Methods that know nothing about the model: what a map must beat (Adebayo et al. 2018).
CONTROL_METHODS: frozenset[str] = frozenset({"random", "edge", "centre", "constant"})


def group_of(metric: str) -> Group:
    """The group of a metric registry name; ``other`` for names outside ``GROUP_OF``."""
    return _BY_KEY[GROUP_OF.get(metric, "other")]


def is_control(method: str) -> bool:
    return method in CONTROL_METHODS
