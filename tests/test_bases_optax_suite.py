"""optax's own common suite for contributed optimizers, run on the bases.

``optax.contrib._common_test.ContribTest`` holds the checks every optimizer
in ``optax.contrib`` passes: extra arguments and no recompilation, state
shape, dtype and sharding stability under ``lax.cond`` (float16 to
float64), output dtypes (bfloat16, float32), ``MultiSteps``,
``inject_hyperparams``, learning-rate schedules, ``tree_map_params`` and
convergence on four small problems. Its tests are parametrized with
optax's own optimizers; here their bodies (the functions ``absl``'s
``parameterized`` wraps) run with ours, found under the same names through
the suite's ``_get_opt_factory``. The convergence runs (30,000 steps on
four problems) are ``slow``.

The suite injects every numeric default into ``inject_hyperparams`` except
a fixed list of static names (``rank`` and ``update_proj_gap`` among them),
so the SGG aliases, whose cluster count, sample size and K-means
iterations are static, run through factories that expose only their
learning rate and weight decay (as the suite runs ``galore`` with ``rank``).
Adam-mini's ``block_fn`` is fixed the same way: the problems' leaves have
no names, so every vector is one block and every matrix has a block per
output neuron.
"""

import re

import jax.numpy as jnp
import optax
import pytest
from optax.contrib import _common_test as suite

import sgg_optax

_SGG = dict(num_clusters=2, recluster_interval=3, sample_size=64)


def _blocks(name, leaf):
  del name
  return 'whole' if leaf.ndim < 2 else 'mlp'


def adam_mini(learning_rate: optax.ScalarOrSchedule,
              weight_decay: float = 0.0) -> optax.GradientTransformation:
  return sgg_optax.adam_mini(learning_rate, weight_decay=weight_decay,
                             block_fn=_blocks)


def came_sgg(learning_rate: optax.ScalarOrSchedule,
             weight_decay: float = 0.0) -> optax.GradientTransformation:
  return sgg_optax.came_sgg(learning_rate, weight_decay=weight_decay, **_SGG)


def apollo_sgg(learning_rate: optax.ScalarOrSchedule,
               weight_decay: float = 0.0) -> optax.GradientTransformation:
  return sgg_optax.apollo_sgg(learning_rate, rank=1, update_proj_gap=5,
                              weight_decay=weight_decay, **_SGG)


FACTORIES = {
    'came': sgg_optax.came,
    'came_sgg': came_sgg,
    'apollo': sgg_optax.apollo,
    'apollo_sgg': apollo_sgg,
    'adam_mini': adam_mini,
}
OPTIMIZERS = {
    'came': {'learning_rate': 1e-2},
    'came_sgg': {'learning_rate': 1e-2},
    'apollo': {'learning_rate': 1e-2, 'rank': 1, 'update_proj_gap': 5},
    'apollo_sgg': {'learning_rate': 1e-2},
    'adam_mini': {'learning_rate': 1e-2},
}


@pytest.fixture(autouse=True)
def _our_factories(monkeypatch):
  found = suite._get_opt_factory  # noqa: SLF001
  monkeypatch.setattr(suite, '_get_opt_factory',
                      lambda name: FACTORIES.get(name) or found(name))


def _body(test: str):
  """The undecorated body of one of the suite's parametrized tests."""
  for attr in dir(suite.ContribTest):
    if re.fullmatch(re.escape(test) + r'\d+', attr):
      return attr, getattr(suite.ContribTest, attr).__wrapped__
  raise LookupError(f'optax.contrib._common_test has no test {test!r}')


def _run(test: str, name: str, **kw) -> None:
  attr, body = _body(test)
  body(suite.ContribTest(attr), opt_name=name, opt_kwargs=OPTIMIZERS[name],
       wrapper_name=None, wrapper_kwargs=None, **kw)


BASES = ('came', 'apollo', 'adam_mini')


def _cases(fast: tuple[str, ...] = BASES, **axes):
  """The optimizers (and ``axes``, e.g. dtypes, whose first value is the
  fast one), with everything but ``fast`` at the first values ``slow``."""
  names = list(OPTIMIZERS)
  (axis, values), = axes.items() if axes else (('', ('',)),)
  cases = []
  for name in names:
    for i, value in enumerate(values):
      slow = name not in fast or i > 0
      args = (name, value) if axes else (name,)
      cases.append(pytest.param(*args, marks=[pytest.mark.slow] * slow))
  return pytest.mark.parametrize(f'name,{axis}' if axes else 'name', cases)


# In the fast set: each base once (the first dtype) through the checks of
# inject_hyperparams, output dtypes and state stability; the rest, SGG
# aliases included, in the slow set. (tests/test_bases.py also checks
# recompiles and dtypes on matrices, and the SGG aliases against their
# bases.)
@_cases(fast=())
def test_accepts_extra_args_and_does_not_recompile(name):
  _run('test_optimizers_accept_extra_args', name, wrap=False)


@_cases()
def test_can_be_wrapped_in_inject_hyperparams(name):
  _run('test_optimizers_can_be_wrapped_in_inject_hyperparams', name)


@_cases(dtype=('bfloat16', 'float32'))
def test_preserves_dtype(name, dtype):
  _run('test_preserve_dtype', name, dtype=dtype)


@_cases(fast=(), dtype=('bfloat16', 'float32'))
def test_multisteps_gradient_accumulation(name, dtype):
  _run('test_gradient_accumulation', name, dtype=dtype)


@_cases(dtype=('float16', 'bfloat16', 'float32', 'float64'))
def test_state_shape_dtype_shard_stability(name, dtype):
  _run('test_state_shape_dtype_shard_stability', name,
       dtype=getattr(jnp, dtype))


@_cases(fast=())
def test_accepts_a_learning_rate_schedule(name):
  _run('test_optimizers_accept_learning_rate_schedule_if_type_annotated_as_'
       'such', name)


@pytest.mark.slow
@pytest.mark.parametrize('name', list(OPTIMIZERS))
@pytest.mark.parametrize('target', ['parabola', 'rosenbrock',
                                    'matrix_parabola', 'mixed_tensor_target'])
def test_tree_map_params_and_convergence(name, target):
  _run('test_optimizers', name, dtype='float32',
       target=getattr(suite, f'_setup_{target}'))
