"""The one place that knows ``torch.func``: functional parameters, a differentiable inner loop, and
the tasks of a meta-batch computed in parallel (``vmap``) or one after another (the reference loop).

Works on any unmodified ``nn.Module``: parameters are a ``dict[str, Tensor]`` (the module's own
names) and the module is run with :func:`torch.func.functional_call`; nothing inside the module is
mutated.

    params = parameters(net)                                   # the meta-parameters θ, live
    loss = lambda p: F.cross_entropy(call(net, p, sx), sy)     # a pure function of the parameters
    fast_params = sgd(loss, params, lr=0.4, steps=1)           # θ' = θ − α ∇L(θ),
                                                               # differentiable in θ, α

Inner-loop gradients (Finn et al. 2017, eq. 1, with per-parameter rates as in Meta-SGD, Li et al.
2017): ``θ_{i+1} = θ_i − α_i ⊙ ∇_θ L_support(θ_i)``; second order by default, ``first_order=True``
treats ``∇L`` as a constant (first-order MAML). ``α_i`` may be a float, one tensor per parameter
(learnable: Meta-SGD) and may differ per step (a sequence with one entry per step).

Two implementations of a meta-batch, equal to float64 round-off (tests/test_functional.py):

- :func:`vmap_tasks`: ``vmap`` over the task axis of a per-task function
  ``task_fn(grad_fn, params, *task)``. The per-task meta-gradient is computed *inside* the vmap too,
  ``vmap(grad(task))``, and handed to ``loss.backward()`` through a surrogate loss. On torch 2.13
  both ``grad(vmap(...))`` and plain autograd backward through ``vmap`` get second-order
  meta-gradients through BatchNorm wrong (a few percent to ~11% relative error in float64, checked
  against finite differences), while ``vmap(grad(...))`` is exact; first-order and head-only (ANIL)
  meta-gradients are unaffected.
- :func:`loop_tasks`: the reference, one task after another with
  ``torch.autograd.grad(create_graph=...)`` (clone, adapt, query loss: how learn2learn computes it).

BatchNorm: as in MAML (Finn et al. 2017, §5.2, and their code), normalise with the statistics of the
batch being processed — the support set in the inner loop and the whole query set after it
(transductive). Build such networks with ``track_running_stats=False``: then BatchNorm holds no
running statistics, nothing is written in place under ``vmap`` (the torch.func docs forbid it), and
train and eval modes behave the same.

``call`` always passes ``tie_weights=False``: the default re-ties the parameters of a submodule
registered twice, which was reported to corrupt such modules on torch 2.13. :func:`parameters` keeps
one name per tensor (``named_parameters`` deduplicates), which is what ``tie_weights=False`` needs
to stay correct.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Mapping, Sequence

import torch
from torch import Tensor, nn

Params = dict[str, Tensor]
# One learning rate for every parameter, or one per parameter (tensors broadcastable to it;
# learnable).
StepLR = float | Tensor | Mapping[str, float | Tensor]
# The same for every step, or a sequence with one StepLR per step (per-step rates).
LR = StepLR | Sequence[StepLR]
# (loss of params, params, first_order) → gradients of the loss w.r.t. params, same keys.
GradFn = Callable[[Callable[[Params], Tensor], Params, bool], Params]
# (grad_fn, params, *one task's tensors) → (query loss (), outputs): what a meta-batch runs per
# task.
TaskFn = Callable[..., tuple[Tensor, Tensor]]


def parameters(module: nn.Module, prefix: str | None = None) -> Params:
    """The module's live trainable parameters by name (one name per tensor), optionally those under
    ``prefix``. Frozen weights (``requires_grad=False``, e.g. the lower layers of a
    ``transformer-topL`` backbone) are neither adapted nor meta-learned: :func:`call` takes them
    from the module."""
    return {
        k: p
        for k, p in module.named_parameters()
        if p.requires_grad and (prefix is None or k == prefix or k.startswith(prefix + "."))
    }


def call(module: nn.Module, params: Mapping[str, Tensor], *args, **kwargs):
    """``module(*args, **kwargs)`` with ``params`` (any subset of its names) in place of its own."""
    return torch.func.functional_call(
        module, dict(params), args, kwargs, tie_weights=False, strict=False
    )


def lr_at(lr: LR, name: str, step: int) -> float | Tensor:
    """The rate of parameter ``name`` at inner step ``step`` (a per-step sequence repeats its last
    entry)."""
    if isinstance(lr, Sequence):
        lr = lr[min(step, len(lr) - 1)]
    return lr[name] if isinstance(lr, Mapping) else lr


def func_grad(loss: Callable[[Params], Tensor], params: Params, first_order: bool) -> Params:
    """Gradients with ``torch.func.grad``: works inside ``vmap`` and under an outer ``no_grad``;
    stays differentiable w.r.t. whatever ``params`` depend on unless ``first_order``."""
    grads = torch.func.grad(loss)(params)
    return {k: g.detach() for k, g in grads.items()} if first_order else grads


def autograd_grad(loss: Callable[[Params], Tensor], params: Params, first_order: bool) -> Params:
    """Gradients with ``torch.autograd.grad(create_graph=...)``: the per-task reference. Under an
    outer ``no_grad`` (evaluation) it still adapts, building no graph to the meta-parameters."""
    track = torch.is_grad_enabled()
    with torch.enable_grad():
        xs = {k: p if p.requires_grad else p.detach().requires_grad_() for k, p in params.items()}
        grads = torch.autograd.grad(
            loss(xs), list(xs.values()), create_graph=track and not first_order
        )
    return dict(zip(xs, grads))


def sgd(
    loss: Callable[[Params], Tensor],
    params: Params,
    lr: LR,
    steps: int,
    first_order: bool = False,
    grad_fn: GradFn = func_grad,
) -> Params:
    """``steps`` differentiable SGD steps ``θ_{i+1} = θ_i − α_i ⊙ ∇L(θ_i)`` (Finn et al. 2017, eq.
    1; Li et al. 2017, eq. 3 for per-parameter α). Returns the fast parameters (same keys)."""
    for i in range(steps):
        grads = grad_fn(loss, params, first_order)
        params = {k: p - lr_at(lr, k, i) * grads[k] for k, p in params.items()}
    return params


def subset(params: Mapping[str, Tensor], prefix: str) -> Params:
    """The entries under ``prefix``, renamed relative to it: ``{"net.head.weight": w}``, "net" →
    ``{"head.weight": w}``."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in params.items() if k.startswith(prefix + ".")}


def surrogate(value: Tensor, params: Params, grads: Params) -> Tensor:
    """A scalar equal to ``value`` whose gradient w.r.t. ``params`` is ``grads`` (precomputed,
    constant)."""
    linear = sum((p * grads[k]).sum() for k, p in params.items())
    return value.detach() + linear - linear.detach()


def vmap_tasks(task_fn: TaskFn, params: Params, *tasks: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """All tasks at once: ``task_fn(func_grad, params, *task_i)`` vmapped over dim 0 of ``tasks``.

    Returns ``(loss, losses, outputs)``: the mean query loss, per-task losses (B,) and outputs
    (B, ...). When gradients are enabled the per-task meta-gradients are computed inside the vmap
    (``vmap(grad(task))``, exact) and ``loss`` is a :func:`surrogate` that hands their mean to
    ``loss.backward()``. Autograd backward *through* the vmap, like ``grad(vmap(...))``, is not
    used: on torch 2.13 it gets second-order meta-gradients through BatchNorm wrong by a few
    percent.
    """
    train = torch.is_grad_enabled() and any(p.requires_grad for p in params.values())
    if not train:
        losses, outputs = torch.func.vmap(lambda *t: task_fn(func_grad, params, *t))(*tasks)
        return losses.mean(), losses, outputs

    def per_task(p: Params, *task: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        loss, outputs = task_fn(func_grad, p, *task)
        return loss, (loss, outputs)

    fixed = {k: p.detach() for k, p in params.items()}
    grads, (losses, outputs) = torch.func.vmap(
        torch.func.grad(per_task, has_aux=True), in_dims=(None,) + (0,) * len(tasks)
    )(fixed, *tasks)
    loss = surrogate(losses.mean(), params, {k: g.mean(0) for k, g in grads.items()})
    return loss, losses, outputs


def loop_tasks(task_fn: TaskFn, params: Params, *tasks: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The reference: ``task_fn(autograd_grad, params, *task_i)`` one task after another (clone,
    adapt, query loss), meta-gradients by plain autograd. Returns ``(loss, losses, outputs)`` as
    :func:`vmap_tasks`."""
    outs = [
        task_fn(autograd_grad, params, *(t[i] for t in tasks)) for i in range(tasks[0].shape[0])
    ]
    losses, outputs = (torch.stack(o) for o in zip(*outs))
    return losses.mean(), losses, outputs


def run_tasks(
    task_fn: TaskFn, params: Params, *tasks: Tensor, parallel: str = "vmap"
) -> tuple[Tensor, Tensor, Tensor]:
    """Dispatch to :func:`vmap_tasks` (``parallel="vmap"``) or :func:`loop_tasks` (``"loop"``)."""
    if parallel == "vmap":
        return vmap_tasks(task_fn, params, *tasks)
    if parallel == "loop":
        return loop_tasks(task_fn, params, *tasks)
    raise ValueError(f"parallel must be 'vmap' or 'loop', got {parallel!r}")


class AutoParallel:
    """``parallel: auto``: the faster of ``vmap`` and the loop, measured for this device and input
    shape.

    Which one wins depends on the device, the network, the shapes and the thread count (on a 2-core
    CPU ``metalab bench`` measured the loop 2.3× faster with 15 queries and even with 1), so nothing
    is assumed: the first time :meth:`choose` sees a signature ``key`` it runs ``trial(impl)`` for
    each implementation twice — a warm-up, then timed — and keeps the faster for every later call
    with that key. A trial that runs out of memory counts as infinitely slow, and so does a vmap
    trial that fails (a network with data-dependent shapes, like the ``transformer`` backbone).
    Both implementations agree to round-off, so the choice changes speed, not results;
    bit-identical reruns across machines need an explicit ``parallel``.

        auto = AutoParallel()
        impl = auto.choose(
            ("train", x.shape), lambda impl: run_tasks(task, params, x, parallel=impl), x.device
        )
    """

    IMPLEMENTATIONS = ("vmap", "loop")

    def __init__(self) -> None:
        self.choices: dict[Hashable, str] = {}
        self.seconds: dict[Hashable, dict[str, float]] = {}  # the measurements behind each choice

    def choose(self, key: Hashable, trial: Callable[[str], object], device: torch.device) -> str:
        if key not in self.choices:
            seconds = {impl: self._time(trial, impl, device) for impl in self.IMPLEMENTATIONS}
            self.seconds[key] = seconds
            self.choices[key] = min(self.IMPLEMENTATIONS, key=seconds.__getitem__)  # ties: vmap
        return self.choices[key]

    def run_tasks(
        self, task_fn: TaskFn, params: Params, *tasks: Tensor, key: Hashable = ()
    ) -> tuple[Tensor, Tensor, Tensor]:
        """:func:`run_tasks` with the faster implementation for these shapes (``key``: anything else
        the cost depends on, e.g. the number of inner steps). Trials include the backward pass when
        training."""

        def trial(impl: str) -> None:
            loss = run_tasks(task_fn, params, *tasks, parallel=impl)[0]
            if loss.requires_grad:
                torch.autograd.grad(
                    loss, [p for p in params.values() if p.requires_grad], allow_unused=True
                )

        signature = (key, torch.is_grad_enabled(), tasks[0].device, tuple(t.shape for t in tasks))
        return run_tasks(
            task_fn, params, *tasks, parallel=self.choose(signature, trial, tasks[0].device)
        )

    @staticmethod
    def _time(trial: Callable[[str], object], impl: str, device: torch.device) -> float:
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *_: None)
        try:
            trial(impl)  # warm-up: allocator, kernels, lazy initialisation
            sync(device)
            start = time.perf_counter()
            trial(impl)
            sync(device)
            return time.perf_counter() - start
        except torch.OutOfMemoryError:
            if device.type == "cuda":
                torch.cuda.empty_cache()
            return math.inf
        except RuntimeError:  # a network vmap cannot run (data-dependent shapes): the loop
            if impl != "vmap":
                raise
            return math.inf
