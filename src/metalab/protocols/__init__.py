"""Evaluation protocols: the standard fixed-episode protocol, Lake et al.'s one-shot challenge,
regression curves, and side-by-side comparison of runs.

``PROTOCOLS`` is what ``metalab eval`` chooses from (:func:`metalab.protocols.base.choose`): the
one whose flags were given, else the first automatic one that applies, in this order. A new
protocol is a :class:`~metalab.protocols.base.Protocol` subclass added here.
"""

from metalab.protocols.base import Evaluation, Protocol, choose
from metalab.protocols.omniglot_challenge import Challenge
from metalab.protocols.regression import Regression
from metalab.protocols.standard import Standard

PROTOCOLS: tuple[Protocol, ...] = (Challenge(), Regression(), Standard())

__all__ = ["PROTOCOLS", "Evaluation", "Protocol", "choose"]
