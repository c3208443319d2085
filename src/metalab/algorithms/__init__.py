"""Algorithms of the three families (and transfer baselines); importing this fills the registry."""

from metalab.algorithms.base import MetaLearner, StepOutput  # noqa: F401
from metalab.algorithms.metric import (  # noqa: F401
    matching,
    protonet,  # noqa: F401
    relation,
    siamese,
)
from metalab.algorithms.model_based import mann, metanet, snail  # noqa: F401
from metalab.algorithms.optimization import (  # noqa: F401
    maml,
    meta_lstm,  # noqa: F401
    reptile,
)
from metalab.algorithms.transfer import contrastive, finetune  # noqa: F401
