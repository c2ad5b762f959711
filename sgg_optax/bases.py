"""The paper's other base optimizers: CAME, APOLLO and Adam-mini.

Each is a ``scale_by_*`` transformation with a ``NamedTuple`` state and an
alias with a learning rate and weight decay, as :func:`optax.scale_by_adam`
and :func:`optax.adamw`; each matches its authors' PyTorch package step by
step (``came-pytorch`` 0.1.3, ``apollo-torch`` 1.0.3, ``adam-mini`` 1.1.1).
:func:`came_sgg` and :func:`apollo_sgg` add SGG. Every name is also
exported by :mod:`sgg_optax`.
"""

from sgg_optax._src.adam_mini import (
    ScaleByAdamMiniState,
    adam_mini,
    scale_by_adam_mini,
)
from sgg_optax._src.apollo import ScaleByApolloState, apollo, scale_by_apollo
from sgg_optax._src.bases_sgg import apollo_sgg, came_sgg
from sgg_optax._src.came import ScaleByCameState, came, scale_by_came

__all__ = (
    'ScaleByAdamMiniState',
    'ScaleByApolloState',
    'ScaleByCameState',
    'adam_mini',
    'apollo',
    'apollo_sgg',
    'came',
    'came_sgg',
    'scale_by_adam_mini',
    'scale_by_apollo',
    'scale_by_came',
)
