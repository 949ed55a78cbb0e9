r"""Panel for notebook 11: what each public mistake reports as "the" norm, for any mesh.

A job with data-parallel dimensions ``replicate`` (:math:`R`) x ``shard`` (:math:`S`),
so :math:`W = RS` ranks, holds the dense gradient HSDP-style (split into :math:`S`
shards, each shard on :math:`R` ranks) and the experts split over ``ep`` ranks (each
group of experts on :math:`W/\text{ep}` ranks). The squared pieces come from the toy
MoE of :mod:`clipping_lib.lab.meshes`, computed once in one process; every mesh and
mistake is then arithmetic on them (cumulative sums give any shard's sum), so a slider
move needs no workers. :func:`mesh_view` is the pure computation the panel draws.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import ipywidgets as widgets
import numpy as np

from clipping_lib.lab.meshes import EXPERT_NAMES, moe_grads
from clipping_lib.lab.plots import COLORS, freeze_static_artists, new_figure
from clipping_lib.lab.widgets import SliderPanel

MISTAKES = {
    "rank-local norm (no reduction)": "local",
    "each EP group's own norm (Automodel#3816)": "own_group",
    "mean of the rank norms (DeepSpeed#8475)": "averaged",
    "experts summed over their replicas": "experts_twice",
    "HSDP shards summed over the replicas": "shards_twice",
}
MAX_RANKS = 32
EXPERTS = 4  # the toy MoE of the notebook's section 2


@dataclass(frozen=True)
class MeshPieces:
    """Squared gradient pieces of one model: the dense entries and each expert's total."""

    dense_squares: np.ndarray  # every dense gradient entry, squared, in storage order
    expert_squares: np.ndarray  # one squared norm per expert

    @property
    def true_norm(self) -> float:
        return float(np.sqrt(self.dense_squares.sum() + self.expert_squares.sum()))


def moe_pieces(seed: int = 0) -> MeshPieces:
    """The pieces of the toy MoE's single-process gradient (4 experts)."""
    grads = moe_grads(seed, experts=EXPERTS)
    dense = np.concatenate(
        [g.double().reshape(-1).numpy() for n, g in grads.items() if n not in EXPERT_NAMES]
    )
    experts = sum(grads[n].double().pow(2).flatten(1).sum(1).numpy() for n in EXPERT_NAMES)
    return MeshPieces(dense**2, np.asarray(experts))


@dataclass(frozen=True)
class MeshView:
    world: int
    ep: int  # ep after clamping to the world size
    true_norm: float
    reported: np.ndarray  # what each rank reports under the chosen mistake
    errors: dict[str, float]  # mistake -> largest relative error over the ranks


def _shard_sums(squares: np.ndarray, parts: int) -> np.ndarray:
    """The sums of ``np.array_split(squares, parts)``, from one cumulative sum."""
    bounds = np.array([len(chunk) for chunk in np.array_split(squares, parts)]).cumsum()
    total = np.concatenate([[0.0], np.cumsum(squares)])
    return np.diff(total[np.concatenate([[0], bounds])])


def _check_power_of_two(value: object, name: str, largest: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1 or value > largest or value & (value - 1):
        raise ValueError(f"{name} must be a power of two from 1 to {largest}, got {value}")
    return int(value)


def mesh_view(pieces: MeshPieces, replicate: int, shard: int, ep: int, mistake: str) -> MeshView:
    r"""Each rank's reported norm under ``mistake`` (a value of :data:`MISTAKES`).

    Rank :math:`k` (of :math:`W = RS`) holds dense shard :math:`k \bmod S` and expert
    group :math:`k \bmod \text{ep}`; ``ep`` is clamped to :math:`W`. The right norm is
    :math:`\sqrt{D + X}` for dense and expert squared norms :math:`D, X`; the mistakes
    report :math:`\sqrt{D_s + X_e}` (local), :math:`\sqrt{D + X_e}` (own EP group), the
    mean of those over the ranks (averaged), :math:`\sqrt{D + (W/\text{ep}) X}`
    (experts summed over their replicas) and :math:`\sqrt{R D + X}` (shards summed over
    the replicas).
    """
    replicate = _check_power_of_two(replicate, "replicate", 8)
    shard = _check_power_of_two(shard, "shard", 8)
    ep = _check_power_of_two(ep, "ep", EXPERTS)
    if mistake not in MISTAKES.values():
        raise ValueError(f"mistake must be one of {sorted(MISTAKES.values())}, got {mistake!r}")
    world = replicate * shard
    ep = min(ep, world)
    ranks = np.arange(world)
    dense, experts = pieces.dense_squares.sum(), pieces.expert_squares.sum()
    dense_local = _shard_sums(pieces.dense_squares, shard)[ranks % shard]
    expert_local = _shard_sums(pieces.expert_squares, ep)[ranks % ep]
    own_group = np.sqrt(dense + expert_local)
    every = {
        "local": np.sqrt(dense_local + expert_local),
        "own_group": own_group,
        "averaged": np.full(world, own_group.mean()),
        "experts_twice": np.full(world, np.sqrt(dense + world // ep * experts)),
        "shards_twice": np.full(world, np.sqrt(replicate * dense + experts)),
    }
    true = float(np.sqrt(dense + experts))
    errors = {key: float(np.abs(value / true - 1).max()) for key, value in every.items()}
    return MeshView(world, ep, true, every[mistake], errors)


def meshes_panel(seed: int = 0) -> SliderPanel:
    """Per-rank reported norms for one mistake (left), every mistake's error (right)."""
    pieces = moe_pieces(seed)
    first = mesh_view(pieces, 2, 2, 2, "own_group")
    figure = new_figure(9.4, 3.6)
    ranks_ax, errors_ax = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1.3, 1]})
    ranks_ax.axhline(first.true_norm, color=COLORS["original"], ls="--", label="the global norm")
    (dots,) = ranks_ax.plot(np.arange(first.world), first.reported, "o", color=COLORS["value"])
    dots.set_label("what each rank reports")
    ranks_ax.set(xlim=(-1, MAX_RANKS), ylim=(0, 2.2 * first.true_norm), xlabel="rank")
    ranks_ax.set(ylabel="gradient norm")
    ranks_ax.set_title("one mistake, rank by rank", fontsize=10)
    ranks_ax.legend(fontsize=7, loc="upper right")
    labels = list(MISTAKES)
    bars = errors_ax.barh(np.arange(len(labels)), [1.0] * len(labels), color=COLORS["diverged"])
    errors_ax.set(yticks=np.arange(len(labels)), xscale="log", xlim=(1e-3, 10))
    errors_ax.set_yticklabels([label.split(" (")[0] for label in labels], fontsize=7)
    errors_ax.invert_yaxis()
    errors_ax.set(xlabel="largest |reported / true - 1| over the ranks")
    errors_ax.set_title("every mistake, this mesh", fontsize=10)
    figure.tight_layout()
    freeze_static_artists(figure, [dots, *bars])
    readout = widgets.HTML()

    def draw(replicate: int, shard: int, ep: int, mistake: str) -> None:
        view = mesh_view(pieces, replicate, shard, ep, mistake)
        dots.set_data(np.arange(view.world), view.reported)
        for bar, key in zip(bars, MISTAKES.values(), strict=True):
            bar.set_width(max(view.errors[key], 1.1e-3))
        clamped = f" (ep clamped to {view.ep})" if view.ep != ep else ""
        readout.value = (
            f"W = {view.world} ranks{clamped}; the global norm {view.true_norm:.4f}<br>"
            f"reported: {view.reported.min():.4f} to {view.reported.max():.4f}; "
            f"largest error {view.errors[mistake]:.1%}"
        )

    powers = [1, 2, 4, 8]
    controls = {
        "replicate": widgets.SelectionSlider(options=powers[:3], value=2, description="R"),
        "shard": widgets.SelectionSlider(options=powers, value=2, description="S"),
        "ep": widgets.SelectionSlider(options=powers[:3], value=2, description="ep"),
        "mistake": widgets.Dropdown(
            options=list(MISTAKES.items()), value="own_group", description="mistake"
        ),
    }
    return SliderPanel(figure, controls, draw, readout=readout)


PANELS: dict[str, Callable[[], SliderPanel]] = {"meshes": meshes_panel}
