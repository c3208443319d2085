"""Algorithms of the three families (and transfer baselines); importing this fills the registry."""

from metalab.algorithms.base import MetaLearner, StepOutput  # noqa: F401
from metalab.algorithms.metric import matching, protonet, relation, siamese  # noqa: F401
from metalab.algorithms.model_based import mann, metanet, snail  # noqa: F401
from metalab.algorithms.optimization import maml, meta_lstm, reptile  # noqa: F401
from metalab.algorithms.transfer import contrastive, finetune  # noqa: F401
