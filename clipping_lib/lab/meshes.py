r"""Notebook 11's experiments: one global norm across tensor, expert and hybrid-sharded meshes.

Each ``*_norms`` function runs in every worker of a
:class:`clipping_lib.lab.workers.WorkerGroup` of four processes and returns a dict per
rank; the notebook prints what they measured. The single-process gradient of the same
model on the same batch is the reference every distributed norm is checked against.

* :func:`tp_norms`: a tiny transformer block under ``parallelize_module`` (attention and
  MLP projections sharded column- and row-wise, LayerNorms left as plain, replicated
  tensors). ``clip_grad_norm_`` raises on the mix; under ``implicit_replication`` it gets
  the single-process norm; the two hand-made reductions that are not the norm.
* :func:`moe_norms`: a toy mixture of experts whose expert gradients live on a 2x2 mesh
  (``dp_mod_ep`` x ``ep``: experts split over ``ep``, replicated over ``dp_mod_ep``) and
  whose dense gradients are sharded over all four ranks; the per-mesh combination against
  the single-process norm, and the public mistakes reproduced.
* :func:`hsdp_norms`: ``fully_shard`` on a 2-D (replicate x shard) mesh against DDP and
  1-D FSDP, and the two ways a replicate size enters a norm: the gradient divided by
  :math:`R` once too often (norm :math:`R` times too small), the shards' squares summed
  over the replicas (norm :math:`\sqrt R` times too large).
* :func:`bf16_partials`: partial norms reduced in bfloat16 (and float16) against float32,
  as the gradient grows.
* :func:`optimizer_in_backward` (one process): per-parameter clipping inside
  ``register_post_accumulate_grad_hook`` against global clipping of the same gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from clipping_lib.clip import clip_grad_norm_, get_total_norm
from clipping_lib.distributed import grouped_total_norm, mesh_total_norm
from clipping_lib.lab.parallel import make_batch, make_model

__all__ = [
    "MoE",
    "TinyBlock",
    "bf16_partials",
    "hsdp_norms",
    "moe_grads",
    "moe_norms",
    "optimizer_in_backward",
    "per_parameter_clip_hook",
    "tp_batch",
    "tp_norms",
]

# ---------------------------------------------------------------------------------------
# Tensor parallelism
# ---------------------------------------------------------------------------------------


class TinyBlock(nn.Module):
    """A pre-norm transformer block: causal self-attention and an MLP, each with a residual.

    The heads are inferred from the projection's width (``view(B, T, -1, head_dim)``), so
    the same code runs whole or with the projections column-sharded over a mesh (each rank
    then computes ``heads / tp`` heads).
    """

    def __init__(self, d: int = 16, heads: int = 4, ffn: int = 64) -> None:
        super().__init__()
        self.head_dim = d // heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(d, ffn), nn.Linear(ffn, d)

    @property
    def qkv(self) -> tuple[nn.Module, nn.Module, nn.Module]:
        return self.q, self.k, self.v

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        h = self.ln1(x)
        q, k, v = (m(h).view(b, t, -1, self.head_dim).transpose(1, 2) for m in self.qkv)
        attention = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(attention.transpose(1, 2).reshape(b, t, -1))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


TP_PLAN_COLUMNS = ("q", "k", "v", "fc1")  # output features sharded: Shard(0) of the weight
TP_PLAN_ROWS = ("o", "fc2")  # input features sharded: Shard(1); the bias stays Replicate()


def tp_batch(seed: int = 0) -> tuple[Tensor, Tensor]:
    """Inputs ``(4, 6, 16)`` and regression targets, the same on every rank."""
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(4, 6, 16, generator=generator)
    return x, 3.0 * torch.randn(4, 6, 16, generator=generator)


def _full(t: Tensor) -> Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def tp_norms(max_norm: float = 0.5, seed: int = 0) -> dict:
    """A :class:`TinyBlock` tensor-parallel over all ranks; its gradient norm, five ways.

    Returns, on each rank: ``reference`` (one process, whole block) and
    ``reference_clipped``; ``placements`` (each parameter's gradient: ``"plain"`` or its
    DTensor placements); ``mixed_error`` (what ``torch.nn.utils.clip_grad_norm_`` raises on
    the mix of plain and DTensor gradients); ``implicit`` (its norm under
    ``implicit_replication``, placements ``implicit_placements``) and ``implicit_clipped``
    (the full gradient after that clip, gathered); ``library`` (:func:`mesh_total_norm`);
    ``local`` (this rank's pieces only, replicated included: too small) and ``summed``
    (every rank's local squares summed, so each replicated parameter counts once per
    rank: too large); ``replicated_norm`` (the plain and ``Replicate()`` gradients) and
    ``replicated_spread`` (their largest difference between ranks).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.experimental import implicit_replication
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    x, y = tp_batch(seed)
    torch.manual_seed(seed)
    reference = TinyBlock()
    F.mse_loss(reference(x), y).backward()
    ref_grads = [p.grad for p in reference.parameters()]
    result: dict = {"reference": get_total_norm(ref_grads)}
    clip_grad_norm_(reference.parameters(), max_norm)
    result["reference_clipped"] = torch.cat([g.reshape(-1) for g in ref_grads])

    mesh = init_device_mesh("cpu", (dist.get_world_size(),), mesh_dim_names=("tp",))
    torch.manual_seed(seed)
    block = TinyBlock()
    plan = {name: ColwiseParallel() for name in TP_PLAN_COLUMNS}
    plan |= {name: RowwiseParallel() for name in TP_PLAN_ROWS}
    parallelize_module(block, mesh, plan)
    F.mse_loss(block(x), y).backward()
    named = list(block.named_parameters())
    grads = [p.grad for _, p in named]
    result["placements"] = {
        name: str(p.grad.placements) if hasattr(p.grad, "placements") else "plain"
        for name, p in named
    }
    local = [g.to_local() if hasattr(g, "to_local") else g for g in grads]
    result["local"] = get_total_norm(local)
    result["summed"] = grouped_total_norm([(local, dist.group.WORLD)])
    replicated = [_full(g) for g in grads if "Shard" not in str(getattr(g, "placements", ""))]
    result["replicated_norm"] = get_total_norm(replicated)
    flat = torch.cat([g.reshape(-1) for g in replicated])
    high, low = flat.clone(), flat.clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    result["replicated_spread"] = (high - low).max()
    result["library"] = mesh_total_norm(grads)
    try:
        torch.nn.utils.clip_grad_norm_(block.parameters(), max_norm)
        result["mixed_error"] = None
    except RuntimeError as error:  # the mix of plain tensors and DTensors
        result["mixed_error"] = str(error)
    with implicit_replication():
        total = torch.nn.utils.clip_grad_norm_(block.parameters(), max_norm)
    result["implicit_placements"] = str(total.placements)
    result["implicit"] = total.full_tensor()
    result["implicit_clipped"] = torch.cat([_full(g).reshape(-1) for g in grads])
    return result


# ---------------------------------------------------------------------------------------
# Expert parallelism: experts on one mesh, dense parameters on another
# ---------------------------------------------------------------------------------------

EXPERT_NAMES = ("experts.w1", "experts.w2")


class MoE(nn.Module):
    """A toy mixture-of-experts layer with top-1 routing, between two dense projections.

    ``experts.w1`` is ``(E, d, h)`` and ``experts.w2`` is ``(E, h, d)``: dimension 0 indexes
    the expert, which is the dimension expert parallelism splits over ranks. The experts'
    output is multiplied by ``expert_scale`` so that their gradients weigh about as much
    as the dense ones, as in a real MoE, where the experts hold most of the parameters.
    """

    def __init__(
        self, d: int = 8, hidden: int = 16, experts: int = 4, expert_scale: float = 8.0
    ) -> None:
        super().__init__()
        self.expert_scale = expert_scale
        self.inp, self.out = nn.Linear(d, d), nn.Linear(d, d)
        self.router = nn.Linear(d, experts)
        self.experts = nn.Module()
        self.experts.w1 = nn.Parameter(torch.randn(experts, d, hidden) / math.sqrt(d))
        self.experts.w2 = nn.Parameter(torch.randn(experts, hidden, d) / math.sqrt(hidden))

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.inp(x))
        gate, choice = torch.softmax(self.router(h), dim=-1).max(dim=-1)
        w1, w2 = self.experts.w1[choice], self.experts.w2[choice]  # each token's expert
        expert = torch.bmm(torch.relu(torch.bmm(h.unsqueeze(1), w1)), w2).squeeze(1)
        return self.out(h + self.expert_scale * gate.unsqueeze(-1) * expert)


def moe_grads(seed: int = 0, tokens: int = 32, experts: int = 4) -> dict[str, Tensor]:
    """The single-process gradients of :class:`MoE` on a regression batch, by name."""
    torch.manual_seed(seed)
    model = MoE(experts=experts)
    generator = torch.Generator().manual_seed(seed + 2)
    x = torch.randn(tokens, 8, generator=generator)
    y = 2.0 * torch.randn(tokens, 8, generator=generator)
    F.mse_loss(model(x), y).backward()
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()}


# DeepSpeed PR #8478's measurement: four expert gradients, squared norms 20 and 100 per rank
DEEPSPEED_EXPERTS = ((2.0, 4.0), (6.0, 8.0))


def _dtensor_parameter(grad: Tensor) -> nn.Parameter:
    parameter = nn.Parameter(torch.zeros_like(grad))
    parameter.grad = grad.clone()
    return parameter


def moe_norms(max_norm: float = 1.0, seed: int = 0) -> dict:
    """The :class:`MoE` gradient laid out as an expert-parallel job holds it, on 4 ranks.

    The gradient is computed once (one process, whole batch: the reference), then each
    rank keeps its part: expert gradients as DTensors on a 2x2 mesh ``(dp_mod_ep, ep)``
    with placements ``(Replicate(), Shard(0))`` (half of the experts per ``ep`` rank, the
    same half on both ``dp_mod_ep`` ranks), dense gradients ``Shard(0)`` over a 1-D mesh of
    all four ranks. Returns, on each rank: ``reference``, ``expert_norm`` and
    ``dense_norm`` (one process); ``torch_error`` (what ``get_total_norm`` over both meshes
    raises); ``library`` (:func:`mesh_total_norm`) and ``grouped`` (:func:`grouped_total_norm`
    of the plain local pieces, each group reduced over its own ranks); the mistakes:
    ``own_group`` (experts as plain local tensors: each ``ep`` rank adds only its own
    experts, NVIDIA-NeMo/Automodel#3816), ``averaged`` (the mean of rank norms, DeepSpeed
    #8475), ``twice`` (expert squares summed over all four ranks: each expert counted once
    per ``dp_mod_ep`` replica); ``deepspeed_averaged`` and ``deepspeed_right`` (the
    PR #8478 numbers); ``local_experts`` and ``local_dense`` (the norms of this rank's own
    pieces, what a per-rank log line shows); ``clipped_difference`` (after
    :func:`clip_grad_norm_across_meshes_`, the largest difference from the single-process
    clip) and ``ep_rank``.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Replicate, Shard

    from clipping_lib.distributed import clip_grad_norm_across_meshes_

    if dist.get_world_size() != 4:
        raise ValueError(f"moe_norms needs 4 ranks (a 2x2 mesh), got {dist.get_world_size()}")
    rank = dist.get_rank()
    grads = moe_grads(seed)
    experts = {n: g for n, g in grads.items() if n in EXPERT_NAMES}
    dense = {n: g for n, g in grads.items() if n not in EXPERT_NAMES}
    result: dict = {
        "reference": get_total_norm(list(grads.values())),
        "expert_norm": get_total_norm(list(experts.values())),
        "dense_norm": get_total_norm(list(dense.values())),
    }
    sparse_mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp_mod_ep", "ep"))
    dense_mesh = init_device_mesh("cpu", (4,), mesh_dim_names=("dp",))
    ep_rank = result["ep_rank"] = sparse_mesh.get_local_rank("ep")
    my_experts = [g.chunk(2)[ep_rank] for g in experts.values()]
    my_dense = [g.chunk(4)[rank] for g in dense.values()]
    expert_dt = [
        DTensor.from_local(g, sparse_mesh, [Replicate(), Shard(0)], run_check=False)
        for g in my_experts
    ]
    dense_dt = [DTensor.from_local(g, dense_mesh, [Shard(0)], run_check=False) for g in my_dense]
    try:
        torch.nn.utils.get_total_norm(expert_dt + dense_dt)
        result["torch_error"] = None
    except (RuntimeError, NotImplementedError, AssertionError, ValueError) as error:
        result["torch_error"] = f"{type(error).__name__}: {error}"
    result["library"] = mesh_total_norm(expert_dt + dense_dt)
    ep_group = sparse_mesh["ep"]
    result["grouped"] = grouped_total_norm([(my_dense, dist.group.WORLD), (my_experts, ep_group)])
    result["local_experts"] = get_total_norm(my_experts)
    result["local_dense"] = get_total_norm(my_dense)
    result["own_group"] = mesh_total_norm(dense_dt + my_experts)  # experts as plain tensors
    own = torch.sqrt(result["dense_norm"] ** 2 + get_total_norm(my_experts) ** 2)
    dist.all_reduce(own)  # ZeRO-0: every rank holds the dense gradient whole
    result["averaged"] = own / dist.get_world_size()
    result["twice"] = grouped_total_norm(
        [(my_dense, dist.group.WORLD), (my_experts, dist.group.WORLD)]
    )
    mine = [torch.tensor([value]) for value in DEEPSPEED_EXPERTS[ep_rank]]
    rank_norm = get_total_norm(mine)
    dist.all_reduce(rank_norm)
    result["deepspeed_averaged"] = rank_norm / dist.get_world_size()
    result["deepspeed_right"] = grouped_total_norm([(mine, ep_group)])

    params = [_dtensor_parameter(g) for g in expert_dt + dense_dt]
    clip_grad_norm_across_meshes_(params, max_norm)
    clipped = torch.cat([p.grad.full_tensor().reshape(-1) for p in params])
    flat = torch.cat([g.reshape(-1) for g in [*experts.values(), *dense.values()]])
    scale = torch.clamp(max_norm / (result["reference"] + 1e-6), max=1.0)
    result["clipped_difference"] = (clipped - flat * scale).abs().max()
    return result


# ---------------------------------------------------------------------------------------
# HSDP: fully_shard on a replicate x shard mesh
# ---------------------------------------------------------------------------------------


def _fully_sharded(mesh, seed: int, divide_factor: float | None = None) -> nn.Module:
    """:func:`make_model` under ``fully_shard`` on ``mesh`` (1-D: FSDP, 2-D: HSDP).

    With ``divide_factor``, every FSDP unit reduces with sums and divides by that factor
    (``set_gradient_divide_factor``; sum reductions because gloo has no ``PREMUL_SUM``).
    """
    from torch.distributed.fsdp import fully_shard

    model = make_model(seed)
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    if divide_factor is not None:
        for module in model.modules():
            if hasattr(module, "set_gradient_divide_factor"):
                module.set_force_sum_reduction_for_comms(True)
                module.set_gradient_divide_factor(divide_factor)
    return model


def hsdp_norms(seed: int = 0, batch_size: int = 32) -> dict:
    """The MLP of notebook 08 under DDP, FSDP (1-D) and HSDP (2x2), on 4 ranks.

    Two loss normalisations: ``mean`` (each rank averages its own examples; DDP and FSDP
    average over ranks: the full-batch mean) and ``global`` (each rank sums its squared
    errors and divides by the **global** element count, as torchtitan does since its
    PR #2206; the ranks' gradients must then be **summed**). Returns, on each rank:
    ``reference`` (one process); ``ddp``, ``fsdp``, ``hsdp`` (mean loss; HSDP's gradient
    ``hsdp_placements``); ``fsdp_sum`` and ``hsdp_sum`` (global loss, divide factor 1);
    ``ddp_global`` (global loss, DDP's all-reduce averages: divided by the world size once
    too often); ``hsdp_replicate_avg`` (global loss, divide factor :math:`R`: the replicate
    dimension averages); ``summed_over_world`` (HSDP shards' squares summed over all four
    ranks, each counted :math:`R` times) and ``summed_over_shard`` (summed over the shard
    group only); ``replicate`` and ``shard`` sizes.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.nn.parallel import DistributedDataParallel

    world, rank = dist.get_world_size(), dist.get_rank()
    if world != 4:
        raise ValueError(f"hsdp_norms needs 4 ranks (a 2x2 mesh), got {world}")
    x, y = make_batch(batch_size, seed)
    reference = make_model(seed)
    F.mse_loss(reference(x), y).backward()
    result: dict = {"reference": get_total_norm([p.grad for p in reference.parameters()])}
    xs, ys = x.chunk(world)[rank], y.chunk(world)[rank]
    count = y.numel()

    def norm_after(model: nn.Module, loss: str) -> Tensor:
        out = model(xs)
        value = F.mse_loss(out, ys) if loss == "mean" else ((out - ys) ** 2).sum() / count
        value.backward()
        total = get_total_norm([p.grad for p in model.parameters()])
        return total.full_tensor() if hasattr(total, "full_tensor") else total

    flat = init_device_mesh("cpu", (world,), mesh_dim_names=("shard",))
    hybrid = init_device_mesh("cpu", (2, 2), mesh_dim_names=("replicate", "shard"))
    result["replicate"], result["shard"] = 2, 2
    result["ddp"] = norm_after(DistributedDataParallel(make_model(seed)), "mean")
    result["fsdp"] = norm_after(_fully_sharded(flat, seed), "mean")
    hsdp = _fully_sharded(hybrid, seed)
    result["hsdp"] = norm_after(hsdp, "mean")
    result["hsdp_placements"] = str(hsdp[0].weight.grad.placements)
    local = [p.grad.to_local() for p in hsdp.parameters()]
    result["summed_over_world"] = grouped_total_norm([(local, dist.group.WORLD)])
    result["summed_over_shard"] = grouped_total_norm([(local, hybrid["shard"])])
    result["fsdp_sum"] = norm_after(_fully_sharded(flat, seed, 1.0), "global")
    result["hsdp_sum"] = norm_after(_fully_sharded(hybrid, seed, 1.0), "global")
    result["ddp_global"] = norm_after(DistributedDataParallel(make_model(seed)), "global")
    result["hsdp_replicate_avg"] = norm_after(_fully_sharded(hybrid, seed, 2.0), "global")
    return result


# ---------------------------------------------------------------------------------------
# Partial norms reduced in low precision
# ---------------------------------------------------------------------------------------


def bf16_partials(scales: list[float], seed: int = 0) -> dict:
    """Each rank's partial norm of its shard, reduced in float32, bfloat16 and float16.

    The gradient is notebook 08's MLP gradient times each scale; rank ``r`` holds the
    ``r``-th contiguous slice. As fairscale's FSDP did (fairscale#1092), the low-precision
    path casts the partial norm to the gradients' dtype, squares it, all-reduces the
    squares in that dtype and takes the root there. Returns ``scales`` and the totals
    ``fp32``, ``bf16`` and ``fp16`` (one per scale), the same on every rank.
    """
    x, y = make_batch(32, seed)
    model = make_model(seed)
    F.mse_loss(model(x), y).backward()
    flat = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    shard = flat.tensor_split(dist.get_world_size())[dist.get_rank()]
    scale = torch.tensor(scales, dtype=torch.float32)
    partial = torch.linalg.vector_norm(shard) * scale  # this rank's norm, at each scale
    result: dict = {"scales": scale}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        squares = partial.to(dtype) ** 2
        dist.all_reduce(squares)
        result[name] = squares.sqrt().float()
    return result


# ---------------------------------------------------------------------------------------
# Optimizer in backward: each parameter steps as soon as its gradient is ready
# ---------------------------------------------------------------------------------------


def _cosine(a: Tensor, b: Tensor) -> float:
    return F.cosine_similarity(a, b, dim=0).item()


def optimizer_in_backward(max_norm: float = 0.2, lr: float = 0.1, seed: int = 0) -> dict:
    """SGD steps inside ``register_post_accumulate_grad_hook``, against a step after backward.

    Three runs from the same weights on the same batch (notebook 08's MLP): ``global``
    (backward, ``clip_grad_norm_`` over all gradients, step), ``per_parameter`` (each
    parameter's hook clips its own gradient to ``max_norm`` and steps at once, freeing the
    gradient) and ``running`` (each hook clips by the norm of all gradients seen so far:
    the "running grad norm" of pytorch/torchtitan#990). Returns each run's ``update``
    (new weights minus old, flattened), ``order`` (the parameters in the order their hooks
    fired), ``late_norm`` (what ``clip_grad_norm_`` returns when called after the in-
    backward steps: the gradients are gone), ``global_norm`` and the cosines of the two
    in-backward updates with the global one.
    """
    x, y = make_batch(32, seed)

    def flat_params(model: nn.Module) -> Tensor:
        return torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    model = make_model(seed)
    start = flat_params(model)
    F.mse_loss(model(x), y).backward()
    result: dict = {"global_norm": clip_grad_norm_(model.parameters(), max_norm)}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(p.grad, alpha=-lr)
    result["global"] = flat_params(model) - start

    for kind in ("per_parameter", "running"):
        model = make_model(seed)
        order = _step_in_backward(model, kind, max_norm, lr)
        F.mse_loss(model(x), y).backward()
        result[kind] = flat_params(model) - start
        result[f"{kind}_cosine"] = _cosine(result[kind], result["global"])
        if kind == "per_parameter":
            result["order"] = order
            result["late_norm"] = clip_grad_norm_(model.parameters(), max_norm)
    return result


def per_parameter_clip_hook(max_norm: float, lr: float) -> Callable[[Tensor], None]:
    r"""A ``register_post_accumulate_grad_hook`` hook: clip this parameter's gradient, step.

    :math:`p \leftarrow p - \eta\, g \min(1, c / (\lVert g\rVert + 10^{-6}))`, with
    :math:`g` this parameter's own gradient (the only one the hook can see), then
    ``p.grad = None``, so no gradient outlives its step.
    """

    def hook(p: Tensor) -> None:
        with torch.no_grad():
            scale = torch.clamp(max_norm / (p.grad.norm() + 1e-6), max=1.0)
            p.add_(p.grad * scale, alpha=-lr)
        p.grad = None

    return hook


def _step_in_backward(model: nn.Module, kind: str, max_norm: float, lr: float) -> list[str]:
    """Register a hook on every parameter that clips its gradient and takes an SGD step.

    ``kind="per_parameter"`` uses :func:`per_parameter_clip_hook`; ``"running"`` clips by
    the norm of every gradient that has arrived so far. Returns the list the hooks append
    the parameters' names to, in the order they fire.
    """
    names = {id(p): n for n, p in model.named_parameters()}
    order: list[str] = []
    seen = [torch.zeros(())]  # the running sum of squares
    own = per_parameter_clip_hook(max_norm, lr)

    def hook(p: Tensor) -> None:
        order.append(names[id(p)])
        if kind == "per_parameter":
            own(p)
            return
        seen[0] = seen[0] + p.grad.pow(2).sum()
        with torch.no_grad():
            p.add_(p.grad * torch.clamp(max_norm / (seen[0].sqrt() + 1e-6), max=1.0), alpha=-lr)
        p.grad = None

    for p in model.parameters():
        p.register_post_accumulate_grad_hook(hook)
    return order
