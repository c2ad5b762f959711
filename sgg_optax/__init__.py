"""sgg_optax: Scaling with Gradient Grouping (SGG) for optax.

SGG (Li et al., ACL 2025, arXiv:2506.01049) clusters each layer's gradient
statistics into a few groups every ``T`` steps and scales every element's
adaptive step by a factor per group. :func:`sgg` is the chain link,
:func:`with_sgg` the form that wraps a base optimizer and clusters its
momentum, and the aliases are ready-made optimizers.
"""

from sgg_optax._src.aliases import adafactor_sgg, adamw_sgg, lamb_sgg
from sgg_optax._src.diagnostics import (
    ClusterSummary,
    cluster_summary,
    find_sgg_states,
    group_names,
)
from sgg_optax._src.sharding import (
    ids_to_device,
    state_partition_specs,
    state_shardings,
)
from sgg_optax._src.transform import (
    SGGState,
    SGGTransformation,
    SGGWrapperState,
    refresh_due,
    sgg,
    with_sgg,
)
from sgg_optax._src.upgrade import StateMismatchError, upgrade_state
from sgg_optax.bases import (
    adam_mini,
    apollo,
    apollo_sgg,
    came,
    came_sgg,
    scale_by_adam_mini,
    scale_by_apollo,
    scale_by_came,
)

__version__ = '0.2.0'

__all__ = (
    'ClusterSummary',
    'SGGState',
    'SGGTransformation',
    'SGGWrapperState',
    'StateMismatchError',
    'adafactor_sgg',
    'adam_mini',
    'adamw_sgg',
    'apollo',
    'apollo_sgg',
    'came',
    'came_sgg',
    'cluster_summary',
    'find_sgg_states',
    'group_names',
    'ids_to_device',
    'lamb_sgg',
    'refresh_due',
    'scale_by_adam_mini',
    'scale_by_apollo',
    'scale_by_came',
    'sgg',
    'state_partition_specs',
    'state_shardings',
    'upgrade_state',
    'with_sgg',
)
