"""MAML, first-order MAML, Meta-SGD and ANIL: vmap meta-gradients equal the per-task loop in float64
on a Conv-4 with BatchNorm, and each variant does what its paper says."""

import pytest
import torch
import torch.nn.functional as F

from fixtures.tasks import meta_gradient, random_episode
from metalab.algorithms.optimization.maml import MAML
from metalab.config import parse_config
from metalab.errors import ConfigError
from metalab.registry import ALGORITHMS
from metalab.tasks.episodes import Episode

VARIANTS = ["maml", "fomaml", "metasgd", "anil"]
B, N, K, Q, H = 3, 2, 1, 2, 16  # 3 tasks, 2-way 1-shot 2-query, 16×16 images (Conv-4: 16 → 1)


def episode(dtype=torch.float64) -> Episode:
    return random_episode(B, N, K, Q, H, dtype)


def learner(name: str, **options) -> MAML:
    cls = ALGORITHMS.get(name)
    torch.manual_seed(0)
    return cls(cls.Config(hidden=8, inner_lr=0.1, **options), (1, H, H), N).double()


@pytest.mark.parametrize("steps", [1, 5])
@pytest.mark.parametrize("name", VARIANTS)
def test_vmap_meta_gradient_equals_loop(name, steps):
    model, ep = learner(name, inner_steps=steps), episode()
    lv, gv = meta_gradient(model, "vmap", ep)
    ll, gl = meta_gradient(model, "loop", ep)
    assert abs(lv - ll) < 1e-12
    assert float((gv - gl).norm() / gl.norm()) < 1e-10


def test_second_order_differs_from_first_order():
    ep = episode()
    _, second = meta_gradient(learner("maml"), "vmap", ep)
    _, first = meta_gradient(learner("fomaml"), "vmap", ep)
    assert float((second - first).norm() / second.norm()) > 1e-3


def test_first_order_meta_gradient_is_the_query_gradient_at_the_adapted_weights():
    """First-order MAML (Finn et al. 2017, §5.2) by its definition, written out by hand with plain
    autograd:
    θ'_i = θ − α ∇L_support_i(θ), then the meta-gradient is the mean over tasks of ∇_θ'
    L_query_i(θ'_i)."""
    model, ep = learner("fomaml"), episode()
    _, got = meta_gradient(model, "vmap", ep)
    net, alpha, expected = model.net, model.options.inner_lr, []
    theta = dict(net.named_parameters())
    # noqa: E731
    loss = lambda params, x, y: F.cross_entropy(torch.func.functional_call(net, params, (x,)), y)
    for i in range(B):
        grads = torch.autograd.grad(
            loss(theta, ep.support_x[i], ep.support_y[i]), list(theta.values())
        )
        fast = {
            k: (p - alpha * g).detach().requires_grad_() for (k, p), g in zip(theta.items(), grads)
        }
        query = loss(fast, ep.query_x[i], ep.query_y[i])
        expected.append(
            torch.cat([g.flatten() for g in torch.autograd.grad(query, list(fast.values()))])
        )
    expected = torch.stack(expected).mean(0)
    assert float((got - expected).norm() / expected.norm()) < 1e-10


def test_metasgd_inner_rates_receive_gradients():
    model = learner("metasgd", parallel="vmap")
    assert len(model.inner_lrs) == len(list(model.net.parameters()))
    model.meta_loss(episode()).loss.backward()
    assert all(r.grad is not None and r.grad.abs().sum() > 0 for r in model.inner_lrs)


def test_anil_adapts_only_the_head():
    model, ep = learner("anil"), episode()
    seen = {}
    task = model.task

    def spy(grad_fn, params, *t, steps):
        def recording_grad(loss, p, first_order):
            seen.update(p)
            return grad_fn(loss, p, first_order)

        return task(recording_grad, params, *t, steps=steps)

    model.task = spy
    model.predict(ep)
    assert set(seen) == {"weight", "bias"} and seen["weight"].shape == model.net.head.weight.shape


def test_predict_adapts_under_no_grad_and_nil_scores_by_similarity():
    ep = episode()
    for name in VARIANTS:
        with torch.no_grad():
            logits = learner(name, eval_inner_steps=2).predict(ep)
        assert logits.shape == (B, N * Q, N)
    with torch.no_grad():
        nil = learner("anil", nil=True).predict(ep)
    assert nil.shape == (B, N * Q, N) and torch.allclose(
        nil.exp().sum(-1), torch.ones(B, N * Q, dtype=nil.dtype)
    )


def test_vmap_and_loop_predict_agree():
    model, ep = learner("maml", eval_inner_steps=3), episode()
    with torch.no_grad():
        a = model.replace(parallel="vmap").predict(ep)
        b = model.replace(parallel="loop").predict(ep)
    assert torch.allclose(a, b, rtol=0, atol=1e-12)


def test_train_and_eval_ways_must_match():
    cfg = parse_config({"algorithm": {"name": "maml"}, "train": {"ways": 20}, "eval": {"ways": 5}})
    with pytest.raises(ConfigError, match="train.ways = 20 but eval.ways = 5"):
        ALGORITHMS.get("maml").from_config(cfg, (1, 28, 28))
    with pytest.raises(ConfigError, match="algorithm.adapt"):
        MAML(MAML.Config(adapt="body"), (1, 28, 28))


def test_a_few_steps_of_meta_training_lower_the_loss():
    torch.manual_seed(0)
    model = MAML(MAML.Config(hidden=8, inner_lr=0.4), (1, H, H), N)
    ep = episode(torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(15):
        out = model.meta_loss(ep)
        first = first if first is not None else float(out.loss.detach())
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert float(out.loss.detach()) < first


@pytest.mark.parametrize("name", ["maml", "fomaml", "anil"])
def test_zero_head_is_kao_et_al_zeroing_trick(name):
    """Kao et al. 2022, §3.3: every task starts from a zero head. One inner step then makes the
    head's rows (α/N)(μ_c − μ̄) (class means of the support features less their mean; the body
    does not move, its gradient passing through the zero head), so the query logits are those inner
    products; the head itself gets a zero meta-gradient."""
    model, ep = learner(name, zero_head=True, inner_steps=1, eval_inner_steps=1), episode()
    assert not model.net.head.weight.any() and not model.net.head.bias.any()
    with torch.no_grad():
        model.net.head.weight.normal_()  # whatever the stored head holds, a task starts at zero
    logits = model.predict(ep)
    alpha = model.options.inner_lr
    for i in range(B):
        fs, fq = model.net.backbone(ep.support_x[i]), model.net.backbone(ep.query_x[i])
        means = torch.stack([fs[ep.support_y[i] == c].mean(0) for c in range(N)])
        expected = fq @ (alpha / N * (means - means.mean(0))).T
        assert torch.allclose(logits[i], expected, atol=1e-10)
    model.meta_loss(ep).loss.backward()
    assert not model.net.head.weight.grad.any() and not model.net.head.bias.grad.any()
    assert all(p.grad.abs().sum() > 0 for p in model.net.backbone.parameters())
