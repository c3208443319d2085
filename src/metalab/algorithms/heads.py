"""Classifiers over embeddings shared by the transfer methods: a linear or cosine head (Chen et al.
2019, Baseline and Baseline++), multinomial logistic regression and nearest centroid on
L2-normalised embeddings (Tian, Wang, Krishnan, Tenenbaum & Isola, ECCV 2020). Pure functions of
tensors, no learner.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from metalab.algorithms.distances import prototypes, squared_euclidean


def head_logits(kind: str, params: dict[str, Tensor], z: Tensor, scale: float) -> Tensor:
    """Logits of a linear or cosine head: (..., M, D) embeddings, weight (..., N, D) → (..., M, N).

    linear: ``z Wᵀ + b``; cosine (Baseline++, Chen et al. §3.2): ``s · (z/|z|)(W/|W|)ᵀ`` row-wise.
    """
    w = params["weight"]
    if kind == "cosine":
        return scale * F.normalize(z, dim=-1) @ F.normalize(w, dim=-1).transpose(-1, -2)
    return z @ w.transpose(-1, -2) + params["bias"].unsqueeze(-2)


def nearest_centroid_logits(support: Tensor, labels: Tensor, ways: int, query: Tensor) -> Tensor:
    """Tian et al. 2020's nearest centroid on L2-normalised embeddings: (B, S, D), (B, S), (B, M, D)
    → (B, M, N)."""
    centroids = prototypes(F.normalize(support, dim=-1), labels, ways)  # (B, N, D)
    return -squared_euclidean(F.normalize(query, dim=-1), centroids)


def logistic_regression(
    z: Tensor, y: Tensor, ways: int, c: float = 1.0, steps: int = 100
) -> dict[str, Tensor]:
    """Multinomial logistic regression of one task (Tian et al. 2020; scikit-learn's objective and
    solver): minimise ``Σ_i CE(W z_i + b, y_i) + ||W||² / (2c)`` with L-BFGS from zero. (S, D), (S,)
    → weight (N, D), bias (N,)."""
    z64 = z.detach().double()
    w = torch.zeros(ways, z.shape[-1], dtype=torch.float64, device=z.device, requires_grad=True)
    b = torch.zeros(ways, dtype=torch.float64, device=z.device, requires_grad=True)
    solver = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=steps,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def objective() -> Tensor:
        solver.zero_grad()
        loss = F.cross_entropy(z64 @ w.T + b, y, reduction="sum") + w.pow(2).sum() / (2.0 * c)
        loss.backward()
        return loss

    with torch.enable_grad():
        solver.step(objective)
    return {"weight": w.detach().to(z.dtype), "bias": b.detach().to(z.dtype)}


def logistic_regression_logits(
    support: Tensor, labels: Tensor, ways: int, query: Tensor, c: float = 1.0, steps: int = 100
) -> Tensor:
    """Tian et al. 2020's logistic regression on L2-normalised embeddings, one per task:
    (B, S, D), (B, S), (B, M, D) → (B, M, N)."""
    support, query = F.normalize(support, dim=-1), F.normalize(query, dim=-1)
    return torch.stack(
        [
            head_logits("linear", logistic_regression(z, y, ways, c, steps), q, 1.0)
            for z, y, q in zip(support, labels, query)
        ]
    )
