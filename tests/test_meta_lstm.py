"""The LSTM meta-learner (Ravi & Larochelle 2017): preprocessing and the cell update by hand, the
SGD special
case, the paper's first-order treatment of the learner's gradients, meta-gradients, predict, and
training."""

import math

import pytest
import torch
import torch.nn.functional as F

from fixtures.tasks import random_episode
from metalab.algorithms.optimization.meta_lstm import MetaLSTM, MetaLSTMCell, preprocess
from metalab.config import parse_config
from metalab.errors import ConfigError
from metalab.registry import ALGORITHMS
from metalab.tasks.episodes import Episode

B, N, K, Q, H = 2, 2, 1, 2, 16  # 2 tasks, 2-way 1-shot 2-query, 16×16 images (Conv-4: 16 → 1)


def episode(dtype=torch.float64) -> Episode:
    return random_episode(B, N, K, Q, H, dtype)


def learner(dtype=torch.float64, **options) -> MetaLSTM:
    torch.manual_seed(0)
    return MetaLSTM(MetaLSTM.Config(hidden=8, **options), (1, H, H), N).to(dtype)


def fix_gates(model: MetaLSTM, lr: float) -> None:
    """f_t = 1 and i_t = lr whatever the inputs: zero gate weights, saturated / logit biases."""
    with torch.no_grad():
        model.cell.forget.weight.zero_()
        model.cell.forget.bias.fill_(60.0)  # σ(60) rounds to 1 in float64
        model.cell.input.weight.zero_()
        model.cell.input.bias.fill_(math.log(lr / (1 - lr)))


def test_preprocessing_by_hand():
    p = 10.0
    x = torch.tensor([math.exp(2), -math.exp(-3), 0.0, 1e-5, -2e-5], dtype=torch.float64)
    expected = torch.tensor(
        [
            [0.2, 1.0],
            [-0.3, -1.0],
            [-1.0, 0.0],
            [-1.0, math.exp(10) * 1e-5],
            [-1.0, -math.exp(10) * 2e-5],
        ],
        dtype=torch.float64,
    )
    assert torch.allclose(preprocess(x, p), expected, rtol=0, atol=1e-12)
    assert preprocess(torch.tensor(1.0)).shape == (2,)  # a scalar loss → one pair


def test_cell_update_is_the_papers_formula():
    cell = MetaLSTMCell(input_size=2, forget_bias=0.3, input_bias=-0.2).double()
    with torch.no_grad():
        cell.forget.weight.copy_(torch.tensor([[0.5, -1.0, 2.0, 0.25]]))  # over [h1, h2, θ, f_prev]
        cell.input.weight.copy_(torch.tensor([[-0.5, 1.5, 1.0, -0.75]]))  # over [h1, h2, θ, i_prev]
        cell.forget.bias.fill_(0.3)  # exactly, in float64
        cell.input.bias.fill_(-0.2)
    x = torch.tensor([[0.1, -0.2], [0.4, 0.3]], dtype=torch.float64)
    theta, grad = (
        torch.tensor([1.0, -2.0], dtype=torch.float64),
        torch.tensor([0.5, -0.1], dtype=torch.float64),
    )
    f_prev, i_prev = (
        torch.tensor([0.9, 0.8], dtype=torch.float64),
        torch.tensor([0.01, 0.02], dtype=torch.float64),
    )
    new, f, i = (t.detach() for t in cell(x, grad, (theta, f_prev, i_prev)))
    for k in range(2):
        f_k = 1 / (
            1 + math.exp(-(0.5 * x[k, 0] - 1.0 * x[k, 1] + 2.0 * theta[k] + 0.25 * f_prev[k] + 0.3))
        )
        i_k = 1 / (
            1
            + math.exp(-(-0.5 * x[k, 0] + 1.5 * x[k, 1] + 1.0 * theta[k] - 0.75 * i_prev[k] - 0.2))
        )
        assert abs(float(f[k]) - f_k) < 1e-12 and abs(float(i[k]) - i_k) < 1e-12
        assert abs(float(new[k]) - (f_k * float(theta[k]) - i_k * float(grad[k]))) < 1e-12


@pytest.mark.parametrize("steps", [1, 3])
def test_constant_gates_reduce_to_sgd(steps):
    model, ep, lr = learner(), episode(), 0.1
    fix_gates(model, lr)
    sx, sy = ep.support_x[0], ep.support_y[0]
    with torch.no_grad():
        adapted = model.adapt(sx, sy, steps)
    theta = model.theta0.detach().clone()
    for _ in range(steps):  # hand SGD on the support loss
        theta.requires_grad_()
        (g,) = torch.autograd.grad(F.cross_entropy(model.learner(theta, sx), sy), theta)
        theta = (theta - lr * g).detach()
    assert torch.allclose(adapted, theta, rtol=0, atol=1e-12)


def test_learner_gradients_are_constants_as_in_the_paper():
    """With f = 1, i = α and one step, θ_1 = c_0 − α∇ with ∇ a constant, so dL_query/dc_0 =
    ∇L_query(θ_1)
    (no second-derivative term, paper §3.2)."""
    model, ep, lr = learner(inner_steps=1), episode(), 0.1
    fix_gates(model, lr)
    one = ep.task(0)
    model.meta_loss(one).loss.backward()
    theta1 = model.adapt(one.support_x[0], one.support_y[0], 1).detach().requires_grad_()
    (expected,) = torch.autograd.grad(
        F.cross_entropy(model.learner(theta1, one.query_x[0]), one.query_y[0]), theta1
    )
    assert torch.allclose(model.theta0.grad, expected, rtol=0, atol=1e-12)


def test_meta_gradients_reach_c0_and_the_meta_learner():
    model = learner(inner_steps=3)
    model.meta_loss(episode()).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert {n.split(".")[0] for n, _ in model.named_parameters()} == {
        "theta0",
        "lstm",
        "cell",
    }  # no template weights


def test_predict_works_under_no_grad_and_matches_training():
    model, ep = learner(inner_steps=3), episode()
    with torch.no_grad():
        logits = model.predict(ep)
    assert logits.shape == (B, N * Q, N) and not logits.requires_grad
    assert torch.allclose(logits, model.run(ep, 3).detach(), rtol=0, atol=1e-12)
    with torch.no_grad():
        assert not torch.allclose(
            model.predict(ep, steps=0), logits
        )  # the updates change the learner
    with pytest.raises(ConfigError, match="steps"):
        model.predict(ep, steps=-1)


def test_a_few_steps_of_meta_training_lower_the_loss():
    model, ep = learner(torch.float32, inner_steps=3), episode(torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(10):
        out = model.meta_loss(ep)
        losses.append(float(out.loss.detach()))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert losses[-1] < losses[0]


def test_ways_must_match():
    cfg = parse_config(
        {"algorithm": {"name": "meta_lstm"}, "train": {"ways": 20}, "eval": {"ways": 5}}
    )
    with pytest.raises(ConfigError, match="train.ways = 20 but eval.ways = 5"):
        ALGORITHMS.get("meta_lstm").from_config(cfg, (1, 28, 28))
    with pytest.raises(ConfigError, match="have 2 ways .* trained with 3; evaluate with --ways 3"):
        MetaLSTM(MetaLSTM.Config(hidden=8), (1, H, H), 3).predict(episode(torch.float32))
