"""Reptile: the surrogate's gradient is mean(θ − φ̃), so an SGD step of rate ε is Reptile's outer
update;
vmap and the loop adapt identically; non-transductive scores do not mix query examples."""

import pytest
import torch

from metalab import functional as fn
from metalab.algorithms.optimization.reptile import Reptile, interleave
from metalab.tasks.episodes import Episode

B, N, K, Q, H = 3, 2, 2, 2, 16


def episode() -> Episode:
    g = torch.Generator().manual_seed(0)
    y = lambda per: torch.arange(N).repeat_interleave(per).expand(B, -1)  # noqa: E731
    return Episode(
        torch.randn(B, N * K, 1, H, H, generator=g, dtype=torch.float64),
        y(K),
        torch.randn(B, N * Q, 1, H, H, generator=g, dtype=torch.float64),
        y(Q),
        N,
    )


def learner(**options) -> Reptile:
    torch.manual_seed(0)
    return Reptile(
        Reptile.Config(hidden=8, inner_steps=3, inner_batch=2, **options), (1, H, H), N
    ).double()


def test_interleave_puts_every_class_in_each_slice():
    assert interleave(2, 3).tolist() == [0, 3, 1, 4, 2, 5]


@pytest.mark.parametrize("inner_optimizer", ["adam", "sgd"])
def test_sgd_step_on_the_surrogate_is_the_reptile_update(inner_optimizer):
    model, ep = learner(inner_optimizer=inner_optimizer, parallel="vmap"), episode()
    theta = {k: p.detach().clone() for k, p in fn.parameters(model.net).items()}
    fast, _ = model.run(ep, model.options.inner_steps, model.options.inner_batch)
    eps = 0.7
    opt = torch.optim.SGD(model.parameters(), lr=eps)
    model.meta_loss(ep).loss.backward()
    opt.step()
    for k, p in fn.parameters(model.net).items():
        want = theta[k] + eps * (fast[k] - theta[k]).mean(0)  # Nichol et al. 2018, Algorithm 2
        assert torch.allclose(p, want, rtol=0, atol=1e-12)
    assert not torch.allclose(fast["head.weight"][0], theta["head.weight"])  # the inner loop moved


def test_vmap_and_loop_adapt_identically():
    model, ep = learner(), episode()
    fv, lv = model.replace(parallel="vmap").run(ep, 3, 2)
    fl, ll = model.replace(parallel="loop").run(ep, 3, 2)
    # Conv biases feed BatchNorm, which cancels them: their gradient is round-off, which Adam
    # normalises
    # to ±lr, so they are left out of the comparison.
    assert all(
        torch.allclose(fv[k], fl[k], rtol=0, atol=1e-12) for k in fv if not k.endswith(".0.bias")
    )
    assert torch.allclose(lv, ll, rtol=0, atol=1e-10)


def test_non_transductive_scores_do_not_depend_on_other_queries():
    model, ep = learner(transductive=False, eval_inner_steps=2), episode()
    with torch.no_grad():
        logits = model.predict(ep)
        ep.query_x[:, 1:] = torch.randn_like(ep.query_x[:, 1:])
        again = model.predict(ep)
        transductive = learner(eval_inner_steps=2).predict(ep)
    assert logits.shape == transductive.shape == (B, N * Q, N)
    assert torch.allclose(logits[:, 0], again[:, 0], rtol=0, atol=1e-12)
    assert not torch.allclose(logits[:, 1], again[:, 1])
