"""metalab.functional: the inner loop and the two meta-batch implementations, checked in float64
against
finite differences and each other on a small Conv-4 with BatchNorm (batch statistics only)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metalab import functional as fn
from metalab.models import Conv4

B, N, K, Q, H = 3, 2, 1, 2, 12  # 3 tasks, 2-way 1-shot 2-query, 12×12 images


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        Conv4(1, hidden=8, blocks=3, track_running_stats=False), nn.Linear(8, N)
    ).double()


def tasks():
    g = torch.Generator().manual_seed(1)
    sx = torch.randn(B, N * K, 1, H, H, generator=g, dtype=torch.float64)
    qx = torch.randn(B, N * Q, 1, H, H, generator=g, dtype=torch.float64)
    y = lambda per: torch.arange(N).repeat_interleave(per).expand(B, -1)  # noqa: E731
    return sx, y(K), qx, y(Q)


def make_task(net: nn.Module, steps: int, first_order: bool, lr=0.1):
    def task(grad_fn, params, sx, sy, qx, qy):
        fast = fn.sgd(
            lambda p: F.cross_entropy(fn.call(net, p, sx), sy),
            params,
            lr,
            steps,
            first_order,
            grad_fn,
        )
        logits = fn.call(net, fast, qx)
        return F.cross_entropy(logits, qy), logits

    return task


def meta_grads(net, task, parallel):
    params = {k: p.detach().clone().requires_grad_() for k, p in fn.parameters(net).items()}
    loss, _, _ = fn.run_tasks(task, params, *tasks(), parallel=parallel)
    return loss, torch.autograd.grad(loss, list(params.values()))


def flat(grads):
    return torch.cat([g.flatten() for g in grads])


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("steps", [1, 5])
@pytest.mark.parametrize("first_order", [False, True])
def test_vmap_meta_gradient_equals_per_task_loop(steps, first_order):
    net = small_net()
    task = make_task(net, steps, first_order)
    lv, gv = meta_grads(net, task, "vmap")
    ll, gl = meta_grads(net, task, "loop")
    assert abs(float((lv - ll).detach())) < 1e-12
    assert rel(flat(gv), flat(gl)) < 1e-10


def test_second_order_meta_gradient_matches_finite_differences():
    """The loop (plain autograd, create_graph) and vmap agree with a central difference along a
    direction.
    tanh and average pooling make the meta-loss smooth, so the difference converges."""
    torch.manual_seed(0)
    block = lambda i: nn.Sequential(
        nn.Conv2d(i, 8, 3, padding=1),
        nn.BatchNorm2d(8, track_running_stats=False),  # noqa: E731
        nn.Tanh(),
        nn.AvgPool2d(2),
    )
    net = nn.Sequential(block(1), block(8), block(8), nn.Flatten(), nn.Linear(8, N)).double()
    task = make_task(net, 2, False)
    params = {k: p.detach() for k, p in fn.parameters(net).items()}
    d = {k: torch.randn_like(p) for k, p in params.items()}
    eps = 1e-6
    with torch.no_grad():
        shifted = lambda s: fn.run_tasks(
            task,
            {k: p + s * eps * d[k] for k, p in params.items()},
            *tasks(),  # noqa: E731
            parallel="loop",
        )[0]
        fd = float(shifted(1) - shifted(-1)) / (2 * eps)
    for parallel in ("vmap", "loop"):
        _, grads = meta_grads(net, task, parallel)
        directional = float(sum((g * d[k]).sum() for g, k in zip(grads, params)))
        assert abs(directional - fd) < 1e-6 * abs(fd)


def test_autograd_through_vmap_is_not_used_because_it_is_wrong_with_batchnorm():
    """Guards the trap metalab avoids: backward *through* vmap(task with func.grad) differs from the
    loop
    (torch 2.13); if torch fixes it, this test tells us the surrogate is no longer needed."""
    net = small_net()
    task = make_task(net, 1, False)
    params = {k: p.detach().clone().requires_grad_() for k, p in fn.parameters(net).items()}
    losses, _ = torch.func.vmap(lambda *t: task(fn.func_grad, params, *t))(*tasks())
    through = flat(torch.autograd.grad(losses.mean(), list(params.values())))
    _, reference = meta_grads(net, task, "loop")
    assert rel(through, flat(reference)) > 1e-6


def test_per_parameter_per_step_rates_are_differentiable():
    net = small_net()
    params = fn.parameters(net)
    rates = [
        {k: torch.full_like(p, 0.1, requires_grad=True) for k, p in params.items()}
        for _ in range(2)
    ]
    sx, sy, qx, qy = (t[0] for t in tasks())
    fast = fn.sgd(
        lambda p: F.cross_entropy(fn.call(net, p, sx), sy),
        params,
        rates,
        steps=3,
        grad_fn=fn.autograd_grad,
    )
    F.cross_entropy(fn.call(net, fast, qx), qy).backward()
    assert all(
        r.grad is not None and r.grad.abs().sum() > 0 for step in rates for r in step.values()
    )
    assert fn.lr_at(rates, "1.weight", 5) is rates[1]["1.weight"]  # the last rate repeats


def test_subset_adaptation_leaves_other_parameters_alone():
    net = small_net()
    params = fn.parameters(net)
    head = fn.subset(params, "1")
    assert set(head) == {"weight", "bias"}
    sx, sy, _, _ = (t[0] for t in tasks())
    fast = fn.sgd(lambda p: F.cross_entropy(fn.call(net[1], p, net[0](sx)), sy), head, 0.5, 2)
    assert not torch.equal(fast["weight"], head["weight"])
    assert all(torch.equal(a, b) for a, b in zip(fn.parameters(net).values(), params.values()))


def test_submodule_registered_twice_is_called_and_differentiated_correctly():
    """call() passes tie_weights=False; a shared layer used twice gets the new weights at both
    uses."""
    torch.manual_seed(0)
    shared = nn.Linear(3, 3)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.out = shared, shared, nn.Linear(3, 1)

        def forward(self, x):
            return self.out(torch.tanh(self.b(torch.tanh(self.a(x)))))

    net = Twice().double()
    x = torch.randn(4, 3, dtype=torch.float64)
    params = fn.parameters(net)
    assert set(params) == {"a.weight", "a.bias", "out.weight", "out.bias"}  # one name per tensor

    def manual(p):
        w, b = p["a.weight"], p["a.bias"]
        return F.linear(
            torch.tanh(F.linear(torch.tanh(F.linear(x, w, b)), w, b)),
            p["out.weight"],
            p["out.bias"],
        )

    new = {k: 2 * v.detach() for k, v in params.items()}
    assert torch.allclose(fn.call(net, new, x), manual(new), rtol=0, atol=1e-14)
    loss = lambda f: lambda p: f(p).pow(2).sum()  # noqa: E731
    got = fn.sgd(loss(lambda p: fn.call(net, p, x)), new, 0.1, 2)
    want = fn.sgd(loss(manual), new, 0.1, 2)
    assert all(torch.allclose(got[k], want[k], rtol=0, atol=1e-14) for k in want)
    assert torch.equal(net.a.weight, shared.weight) and net.a is net.b  # the module was not touched


def test_autograd_grad_adapts_under_no_grad():
    net = small_net()
    task = make_task(net, 2, False)
    with torch.no_grad():
        loop = fn.run_tasks(task, fn.parameters(net), *tasks(), parallel="loop")
        vmap = fn.run_tasks(task, fn.parameters(net), *tasks(), parallel="vmap")
    assert not loop[0].requires_grad
    assert torch.allclose(loop[2], vmap[2], rtol=0, atol=1e-12)


def test_auto_parallel_keeps_the_faster_per_signature():
    import time

    calls = []

    def trial(impl):  # the loop is slower here; each trial runs a warm-up and a timed call
        calls.append(impl)
        time.sleep(0.02 if impl == "loop" else 0.0)

    auto = fn.AutoParallel()
    assert auto.choose("a", trial, torch.device("cpu")) == "vmap"
    assert calls == ["vmap", "vmap", "loop", "loop"] and auto.seconds["a"]["loop"] >= 0.02
    assert (
        auto.choose("a", trial, torch.device("cpu")) == "vmap" and len(calls) == 4
    )  # measured once per key

    def vmap_out_of_memory(impl):
        if impl == "vmap":
            raise torch.OutOfMemoryError("CUDA out of memory")

    assert auto.choose("b", vmap_out_of_memory, torch.device("cpu")) == "loop"


def test_auto_parallel_run_tasks_equals_the_reference():
    net = small_net()
    task, params = make_task(net, 2, False), fn.parameters(net)
    auto = fn.AutoParallel()
    loss, _, logits = auto.run_tasks(task, params, *tasks(), key=2)
    grads = torch.autograd.grad(loss, list(params.values()))
    ref_loss, _, ref_logits = fn.run_tasks(task, params, *tasks(), parallel="loop")
    ref = torch.autograd.grad(ref_loss, list(params.values()))
    assert len(auto.choices) == 1 and set(auto.choices.values()) <= {"vmap", "loop"}
    assert all(torch.allclose(g, r, rtol=1e-10, atol=1e-12) for g, r in zip(grads, ref))
    assert torch.allclose(logits, ref_logits, rtol=0, atol=1e-12)
    assert not any(
        p.grad is not None for p in params.values()
    )  # the trials left no gradients behind
