"""Prototypical Networks: prototypes and scores checked by hand on known embeddings."""

import torch

from metalab.algorithms.metric.protonet import ProtoNet, prototypes, squared_euclidean
from metalab.tasks.episodes import Episode


def test_prototypes_are_class_means_with_any_shots():
    support = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]]])  # class 0 twice, class 1 once
    labels = torch.tensor([[0, 0, 1]])
    assert torch.equal(prototypes(support, labels, 2), torch.tensor([[[1.0, 0.0], [0.0, 4.0]]]))


def test_scores_are_negative_squared_distances():
    protos = torch.tensor([[[1.0, 0.0], [0.0, 4.0]]])
    query = torch.tensor([[[1.0, 1.0]]])
    assert torch.equal(-squared_euclidean(query, protos), torch.tensor([[[-1.0, -10.0]]]))


def test_identity_embedding_classifies_by_nearest_mean():
    learner = ProtoNet(ProtoNet.Config(), (1, 28, 28))
    learner.encoder = torch.nn.Flatten()  # known embeddings: the pixels themselves
    sx = torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2)])[None]  # (1, 2, 1, 2, 2)
    qx = torch.stack([torch.full((1, 2, 2), 0.2), torch.full((1, 2, 2), 0.9)])[None]
    ep = Episode(sx, torch.tensor([[0, 1]]), qx, torch.tensor([[0, 1]]), ways=2)
    logits = learner.predict(ep)
    assert torch.allclose(logits, -torch.tensor([[[0.16, 2.56], [3.24, 0.04]]]))
    out = learner.meta_loss(ep)
    assert float(out.metrics["accuracy"]) == 1.0
    expected = torch.nn.functional.cross_entropy(logits[0], torch.tensor([0, 1]))
    assert torch.allclose(out.loss, expected)
