"""CAME, APOLLO and Adam-mini against their authors' PyTorch packages.

The fixtures in ``tests/fixtures/bases`` are ``came-pytorch`` 0.1.3,
``apollo-torch`` 1.0.3 and ``adam-mini`` 1.1.1 run in float64 on a few
matrices and vectors for 24 steps (``make_fixtures.py`` there says how to
regenerate them; these tests need no torch). Every step feeds the recorded
gradient and the recorded parameter (the weight decay reads it) to our
float32 transformation, and compares its update and state with torch's at
float32 rounding: ``RTOL`` relative, plus ``RTOL / 10`` of the array's
largest magnitude for entries near zero.
"""

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sgg_optax
from sgg_optax._src import apollo as apollo_src

FIXTURES = pathlib.Path(__file__).resolve().parent / 'fixtures' / 'bases'
META = json.loads((FIXTURES / 'meta.json').read_text())
STEPS = META['steps']
RTOL = 1e-5


def _load(name: str) -> dict[str, np.ndarray]:
  with np.load(FIXTURES / f'{name}.npz') as data:
    return dict(data)


def _close(actual, expected, what: str) -> None:
  expected = np.asarray(expected, np.float64)
  actual = np.asarray(actual, np.float64).reshape(expected.shape)
  scale = float(np.max(np.abs(expected), initial=0.0))
  np.testing.assert_allclose(actual, expected, rtol=RTOL,
                             atol=RTOL / 10 * scale, err_msg=what)


def _params_before(fx, config: str, names, t: int) -> dict[str, np.ndarray]:
  """Torch's parameters before step ``t`` (the initial ones plus the
  recorded updates, summed in float64)."""
  return {n: (fx[f'init/{n}'].astype(np.float64)
              + fx[f'{config}/{n}/updates'][:t].astype(np.float64).sum(0)
              ).astype(np.float32) for n in names}


_STEPS: dict[str, object] = {}  # one jitted step per kind, shared by tests


def _replay(kind, tx_for, fx, config, names, layout=lambda n, x: x,
            extra=None):
  """Our transformation fed torch's gradients and parameters, step by step.

  ``tx_for(extra)`` builds the transformation inside the jitted step, so
  ``extra`` (hyperparameters, projection matrices) is an argument, not a
  constant, and the one compile of ``kind`` serves every ``extra`` of the
  same shapes. Yields the step, our updates and state (in torch's layout
  through ``layout``).
  """
  if kind not in _STEPS:  # init jitted too: eagerly, every op compiles
    _STEPS[kind] = (
        jax.jit(lambda params, extra: tx_for(extra).init(params)),
        jax.jit(lambda grads, state, params, extra: tx_for(extra).update(
            grads, state, params)))
  init_fn, step = _STEPS[kind]
  state = init_fn({n: jnp.asarray(layout(n, fx[f'init/{n}'])) for n in names},
                  extra)
  for t in range(STEPS):
    grads = {n: jnp.asarray(layout(n, fx[f'grads/{n}'][t])) for n in names}
    params = {n: jnp.asarray(layout(n, x)) for n, x in
              _params_before(fx, config, names, t).items()}
    updates, state = step(grads, state, params, extra)
    yield t, {n: layout(n, np.asarray(u)) for n, u in updates.items()}, state


# ------------------------------------------------------------------------------
# CAME
# ------------------------------------------------------------------------------

CAME = _load('came')
CAME_NAMES = ('w', 'u', 't', 'b', 'z', 'bz')  # z, bz: zero gradients


def _came(config: str) -> optax.GradientTransformation:
  # Static decays: traced in float32, 1 - 0.9999 would be off by 1e-4 of
  # itself (the package computes it in float64).
  kw = {k: tuple(v) if isinstance(v, list) else v
        for k, v in META['came'][config].items()}
  return sgg_optax.came(kw.pop('lr'), **kw)


@pytest.mark.parametrize('config', ['default', 'custom'])
def test_came_matches_came_pytorch(config):
  pairs = (('mu', 'exp_avg'), ('v_row', 'exp_avg_sq_row'),
           ('v_col', 'exp_avg_sq_col'), ('res_row', 'exp_avg_res_row'),
           ('res_col', 'exp_avg_res_col'), ('v', 'exp_avg_sq'))
  tx = _came(config)
  for t, updates, state in _replay(f'came {config}', lambda _: tx, CAME,
                                   config, CAME_NAMES):
    came_state = state[0]
    for n in CAME_NAMES:
      _close(updates[n], CAME[f'{config}/{n}/updates'][t],
             f'{config} {n} update, step {t}')
      for ours, theirs in pairs:
        key = f'{config}/{n}/{theirs}'
        mine = getattr(came_state, ours)[n]
        assert (key in CAME) == (not isinstance(mine, optax.MaskedNode))
        if key in CAME:
          _close(mine, CAME[key][t], f'{config} {n} {ours}, step {t}')


def test_came_defaults_are_the_packages():
  import inspect
  sig = inspect.signature(sgg_optax.came).parameters
  assert sig['eps'].default == (1e-30, 1e-16)
  assert sig['betas'].default == (0.9, 0.999, 0.9999)
  assert sig['clip_threshold'].default == 1.0
  assert sig['weight_decay'].default == 0.0


# ------------------------------------------------------------------------------
# APOLLO
# ------------------------------------------------------------------------------

APOLLO = _load('apollo')
APOLLO_NAMES = ('b', 'tall', 'wide')  # tree order: leaf indices 0, 1, 2
PROJECTED = {1: 'tall', 2: 'wide'}


def _apollo(config: str, projector=None) -> optax.GradientTransformation:
  """``sgg_optax.apollo`` as configured in the fixtures, with the test hook
  ``projector`` (None: our own random or SVD projections)."""
  kw = dict(META['apollo'][config])
  lr, wd = kw.pop('lr'), kw.pop('weight_decay')
  assert kw.pop('proj_type') == 'std'
  base = apollo_src._scale_by_apollo(  # noqa: SLF001
      kw.pop('rank'), kw.pop('update_proj_gap'), kw.pop('scale'),
      kw.pop('proj'), kw.pop('scale_type'), (0.9, 0.999), 1e-6, True,
      kw.pop('scale_front', False), False, None, 0, projector)
  assert not kw
  return optax.chain(base, *apollo_src.alias_tail(lr, wd, None))


def _torch_projections(config: str, flip: int | None = None
                       ) -> dict[int, jax.Array]:
  """Torch's projection of each period, per leaf index; ``flip``: negate
  the first singular vector in that period."""
  gap = META['apollo'][config]['update_proj_gap']
  out = {}
  for index, name in PROJECTED.items():
    mats = APOLLO[f'{config}/{name}/ortho_matrix'][::gap].copy()
    if flip is not None:  # rows of (r, n) right projections, columns else
      if name == 'tall':
        mats[flip, 0] *= -1
      else:
        mats[flip, :, 0] *= -1
    out[index] = jnp.asarray(mats)
  return out


def _hooked(config):
  return lambda mats: _apollo(
      config, lambda index, refresh, grad: mats[index][refresh])


def _check_apollo(config, t, updates, state, *, up_to_sign=False):
  st = state[0]
  for n in APOLLO_NAMES:
    _close(updates[n], APOLLO[f'{config}/{n}/updates'][t],
           f'{config} {n} update, step {t}')
    mu = np.asarray(st.mu[n])
    theirs = APOLLO[f'{config}/{n}/exp_avg'][t]
    # A singular vector's sign flips its column (row) of the first moment.
    _close(np.abs(mu) if up_to_sign else mu,
           np.abs(theirs) if up_to_sign else theirs,
           f'{config} {n} mu, step {t}')
    _close(st.nu[n], APOLLO[f'{config}/{n}/exp_avg_sq'][t],
           f'{config} {n} nu, step {t}')
    if n in PROJECTED.values():
      _close(st.grad_norm[n], APOLLO[f'{config}/{n}/scaled_grad'][t],
             f'{config} {n} limiter norm, step {t}')


@pytest.mark.parametrize('config', ['random', 'mini'])
def test_apollo_matches_apollo_torch_given_its_random_projections(config):
  # Torch draws its Gaussian projections from its own generator (seeded by
  # the parameter's index, then advanced at each refresh): ours come from
  # JAX's, so the two cannot agree bit for bit. Given torch's matrices
  # through the test hook, everything else must match, across the
  # refreshes at steps 8 and 16.
  mats = _torch_projections(config)
  for t, updates, state in _replay(config, _hooked(config), APOLLO, config,
                                   APOLLO_NAMES, extra=mats):
    _check_apollo(config, t, updates, state)


def test_apollo_svd_matches_within_a_period_on_its_own_svd():
  # Our SVD may return singular vectors of the other sign. The update does
  # not depend on them within a period (the scaling factors are ratios of
  # norms); the first moment does, column by column, so it is compared in
  # magnitude. Across a refresh the moments carry into the new basis and
  # the signs matter: see the next test.
  gap = META['apollo']['svd']['update_proj_gap']
  for t, updates, state in _replay('svd own', lambda _: _apollo('svd'),
                                   APOLLO, 'svd', APOLLO_NAMES):
    if t == gap:
      break
    _check_apollo('svd', t, updates, state, up_to_sign=True)
    for n in PROJECTED.values():  # the same subspace: equal up to sign
      _close(np.abs(state[0].projection[n]),
             np.abs(APOLLO[f'svd/{n}/ortho_matrix'][t]), f'{n} projection')


def test_apollo_svd_matches_across_refreshes_given_its_matrices():
  mats = _torch_projections('svd')
  for t, updates, state in _replay('svd', _hooked('svd'), APOLLO, 'svd',
                                   APOLLO_NAMES, extra=mats):
    _check_apollo('svd', t, updates, state)
    for n in PROJECTED.values():
      _close(state[0].projection[n], APOLLO[f'svd/{n}/ortho_matrix'][t],
             f'{n} projection, step {t}')


def test_apollo_singular_vector_signs_matter_only_across_a_refresh():
  # The first period's matrices with one singular vector negated: the
  # updates of that period are torch's; from the first refresh on, the
  # moments carried over from the negated basis make them differ.
  gap = META['apollo']['svd']['update_proj_gap']
  flipped = _torch_projections('svd', flip=0)
  diffs = []
  for t, updates, _ in _replay('svd', _hooked('svd'), APOLLO, 'svd',
                               APOLLO_NAMES, extra=flipped):
    diff = max(float(np.max(np.abs(
        updates[n] - APOLLO[f'svd/{n}/updates'][t])) / np.max(np.abs(
            APOLLO[f'svd/{n}/updates'][t]))) for n in PROJECTED.values())
    diffs.append(diff)
  assert max(diffs[:gap]) < RTOL
  assert min(diffs[gap:gap + 2]) > 1e-3


def test_apollo_random_projection_is_regenerated_not_stored():
  state = sgg_optax.scale_by_apollo(rank=2).init({'w': jnp.ones((6, 4))})
  assert isinstance(state.projection['w'], optax.MaskedNode)
  # The matrix of a period is a function of (seed, leaf, period) alone.
  draw = jax.jit(lambda seed, leaf, period: apollo_src._random_projection(  # noqa: SLF001
      jax.random.key(seed), leaf, period, (4, 4096), 4))
  first = draw(0, 1, 3)
  np.testing.assert_array_equal(first, draw(0, 1, 3))
  for other in (draw(1, 1, 3), draw(0, 2, 3), draw(0, 1, 4)):
    assert not np.allclose(first, other)
  assert abs(float(jnp.var(first)) - 1 / 4) < 0.01  # variance 1/r


# ------------------------------------------------------------------------------
# Adam-mini
# ------------------------------------------------------------------------------

MINI = _load('adam_mini')
MINI_NAMES = tuple(k[len('init/'):] for k in MINI if k.startswith('init/'))


def _nested(flat: dict[str, object]) -> dict:
  out: dict = {}
  for name, x in flat.items():
    *parents, leaf = name.split('.')
    node = out
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = x
  return out


def _flat(tree: dict, prefix: str = '') -> dict[str, object]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def _flax_layout(name: str, x):
  """Torch's ``(outputs, inputs)`` weights as Flax kernels ``(inputs,
  outputs)``; embedding tables (tokens, features) are alike in both."""
  return x if x.ndim < 2 or name.startswith('embed') else np.swapaxes(x, -1,
                                                                       -2)


class _AsNested:
  """Our optimizer on nested dicts, seen through dotted names as torch's."""

  def __init__(self, tx):
    self.tx = tx

  def init(self, flat):
    return self.tx.init(_nested(flat))

  def update(self, grads, state, params):
    updates, state = self.tx.update(_nested(grads), state, _nested(params))
    return _flat(updates), state


def test_adam_mini_matches_adam_mini_torch():
  cfg = dict(META['adam_mini'])
  assert cfg['dim'] == 8
  tx = _AsNested(sgg_optax.adam_mini(
      cfg['lr'], tuple(cfg['betas']), cfg['eps'], cfg['weight_decay'],
      num_heads=cfg['n_heads'], num_kv_heads=cfg['n_kv_heads']))
  for t, updates, state in _replay('adam_mini', lambda _: tx, MINI, 'run',
                                   MINI_NAMES, layout=_flax_layout):
    mu, nu = _flat(state[0].mu), _flat(state[0].nu)
    for n in MINI_NAMES:
      _close(updates[n], MINI[f'run/{n}/updates'][t], f'{n} update, step {t}')
      _close(_flax_layout(n, np.asarray(mu[n])), MINI[f'run/{n}/m'][t],
             f'{n} m, step {t}')
      # One value per block, in both: compare them in block order.
      _close(nu[n], MINI[f'run/{n}/v'][t], f'{n} v, step {t}')


def test_adam_mini_blocks_per_role():
  state = sgg_optax.scale_by_adam_mini(num_heads=4, num_kv_heads=2).init(
      {'embed': {'embedding': jnp.ones((10, 8))},
       'attn': {'q_proj': {'kernel': jnp.ones((8, 8)),
                           'bias': jnp.ones(8)},
                'key': {'kernel': jnp.ones((8, 2, 4))},
                'o_proj': {'kernel': jnp.ones((8, 8))}},
       'mlp_norm': {'scale': jnp.ones(8)},
       'lm_head': {'kernel': jnp.ones((8, 10))}})
  shapes = {k: v.shape for k, v in _flat(state.nu).items()}
  assert shapes == {
      'embed.embedding': (10, 1),  # per token
      'attn.q_proj.kernel': (1, 4, 1),  # per head: 8 columns in 4 heads
      'attn.q_proj.bias': (8,),  # Adam
      'attn.key.kernel': (1, 2, 1),  # per key head, (in, heads, head_dim)
      'attn.o_proj.kernel': (1, 8),  # per output neuron
      'mlp_norm.scale': (1,),  # whole (a norm, although its name says mlp)
      'lm_head.kernel': (1, 10)}  # per token of the output layer


@pytest.mark.parametrize('params, kw, message', [
    ({'dense': {'kernel': jnp.ones((4, 4))}}, {}, 'matches none'),
    ({'q_proj': {'kernel': jnp.ones((4, 4))}}, {}, 'pass `num_heads`'),
    ({'q_proj': {'kernel': jnp.ones((4, 6))}}, {'num_heads': 4},
     'does not split into 4 heads'),
    ({'mlp': {'scale': jnp.ones(4)}}, {}, 'needs a matrix'),
    ({'w': jnp.ones((4, 4))}, {'block_fn': lambda n, p: 'neuron'},
     "role 'neuron'"),
    ({'w': jnp.ones((4, 4))}, {'block_fn': lambda n, p: (2,)},
     'block axes'),
], ids=['unknown name', 'no heads', 'heads do not divide', 'role of a vector',
        'unknown role', 'bad axes'])
def test_adam_mini_refuses_leaves_it_cannot_place(params, kw, message):
  with pytest.raises(ValueError, match=message):
    sgg_optax.scale_by_adam_mini(**kw).init(params)


def test_adam_mini_block_fn_places_leaves_and_falls_back_to_names():
  tx = sgg_optax.scale_by_adam_mini(
      block_fn=lambda name, p: (0,) if name == 'dense.kernel' else None)
  state = tx.init({'dense': {'kernel': jnp.ones((4, 3))},
                   'norm': {'scale': jnp.ones(3)}})
  assert state.nu['dense']['kernel'].shape == (4, 1)
  assert state.nu['norm']['scale'].shape == (1,)


# ------------------------------------------------------------------------------
# Arguments
# ------------------------------------------------------------------------------


@pytest.mark.parametrize('make, message', [
    (lambda: sgg_optax.scale_by_came(betas=(0.9, 0.999)), '3 decays'),
    (lambda: sgg_optax.scale_by_came(betas=(0.9, 1.5, 0.9)), r'\[0, 1\]'),
    (lambda: sgg_optax.scale_by_came(clip_threshold=0.0), 'positive'),
    (lambda: sgg_optax.scale_by_apollo(proj='qr'), '`proj`'),
    (lambda: sgg_optax.scale_by_apollo(scale_type='row'), '`scale_type`'),
    (lambda: sgg_optax.scale_by_apollo(rank=jnp.asarray(2)), 'static'),
    (lambda: sgg_optax.scale_by_apollo(update_proj_gap=0), 'positive'),
    (lambda: sgg_optax.scale_by_adam_mini(betas=(0.9, 1.0)), r'\[0, 1\)'),
    (lambda: sgg_optax.scale_by_adam_mini(num_heads=0), 'positive'),
])
def test_bad_arguments_raise_clear_errors(make, message):
  with pytest.raises(ValueError, match=message):
    make()


def test_apollo_projects_only_matrices():
  tx = sgg_optax.scale_by_apollo(rank=1, projected={'w': True, 'b': True})
  with pytest.raises(ValueError, match='matrices only'):
    tx.init({'w': jnp.ones((4, 3)), 'b': jnp.ones(3)})
  state = sgg_optax.scale_by_apollo(rank=1, projected={'w': False}).init(
      {'w': jnp.ones((4, 3))})
  assert state.mu['w'].shape == (4, 3)  # left out: Adam


# ------------------------------------------------------------------------------
# Dtypes, abstract init, recompiles
# ------------------------------------------------------------------------------

_MIXED = {'w16': jnp.ones((6, 4), jnp.bfloat16), 'w32': jnp.ones((4, 6)),
          'b16': jnp.ones(4, jnp.bfloat16)}
_BASES = {
    'came': lambda: sgg_optax.came(1e-2, weight_decay=0.1),
    'apollo': lambda: sgg_optax.apollo(1e-2, rank=2, update_proj_gap=2),
    'adam_mini': lambda: sgg_optax.adam_mini(
        1e-2, block_fn=lambda name, p: 'mlp' if p.ndim == 2 else 'whole'),
}


@pytest.mark.parametrize('name', list(_BASES))
def test_dtypes_abstract_init_and_no_recompiles(name):
  tx = _BASES[name]()
  abstract = jax.eval_shape(tx.init, jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _MIXED))
  state = tx.init(_MIXED)
  assert (jax.tree.map(lambda x: (x.shape, x.dtype), abstract)
          == jax.tree.map(lambda x: (x.shape, x.dtype), state))
  step = jax.jit(tx.update)
  grads = jax.tree.map(lambda x: x * 0.5, _MIXED)
  for i in range(3):  # 2 refreshes of APOLLO's projection on the way
    updates, new = step(jax.tree.map(lambda g, i=i: g * (i + 1), grads),
                        state, _MIXED)
    # bf16 stays bf16; the state keeps its shapes and dtypes.
    assert (jax.tree.map(lambda x: x.dtype, updates)
            == jax.tree.map(lambda x: x.dtype, _MIXED))
    assert (jax.tree.map(lambda x: (x.shape, x.dtype), new)
            == jax.tree.map(lambda x: (x.shape, x.dtype), state))
    assert all(bool(jnp.all(jnp.isfinite(u.astype(jnp.float32))))
               for u in jax.tree.leaves(updates))
    state = new
  assert step._cache_size() == 1  # noqa: SLF001


# ------------------------------------------------------------------------------
# SGG on CAME and APOLLO
# ------------------------------------------------------------------------------

_SGG_PARAMS = {'w': jnp.linspace(-1.0, 1.0, 96).reshape(12, 8),
               'b': jnp.linspace(0.0, 1.0, 8)}


def _grads(i):
  return jax.tree.map(lambda p: jnp.cos(p * (i + 3.0)) + 0.1 * i, _SGG_PARAMS)


@pytest.mark.parametrize('name', [
    'came', pytest.param('apollo', marks=pytest.mark.slow)])
def test_sgg_alias_is_its_base_until_the_first_refresh(name):
  # Before the first refresh every SGG factor is 1: the alias is its base,
  # weight decay included (SGG sits before it and the learning rate).
  kw = dict(weight_decay=0.1) | (
      dict(rank=2, update_proj_gap=2) if name == 'apollo' else {})
  base = getattr(sgg_optax, name)(1e-2, **kw)
  alias = getattr(sgg_optax, f'{name}_sgg')(1e-2, recluster_interval=10,
                                            **kw)
  s_base, s_alias = base.init(_SGG_PARAMS), alias.init(_SGG_PARAMS)

  @jax.jit
  def both(g, s_base, s_alias):
    u_base, s_base = base.update(g, s_base, _SGG_PARAMS)
    u_alias, s_alias = alias.update(g, s_alias, _SGG_PARAMS,
                                    sgg_refresh=False)
    return u_base, s_base, u_alias, s_alias

  for i in range(3):
    u_base, s_base, u_alias, s_alias = both(_grads(i), s_base, s_alias)
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6),
                 u_alias, u_base)


def test_came_sgg_clusters_the_first_moment_with_a_refresh_program():
  tx = sgg_optax.came_sgg(1e-2, recluster_interval=1, num_clusters=2)
  state = tx.init(_SGG_PARAMS)
  _, state = jax.jit(functools.partial(tx.update, sgg_refresh=False))(
      _grads(0), state, _SGG_PARAMS)
  state = jax.jit(tx.refresh)(state)
  summary = sgg_optax.cluster_summary(state)
  assert summary.names == ('w',)  # the matrix; the vector is not grouped
  assert summary.refreshes.tolist() == [1]
  # The ids split CAME's first moment, the paper's statistic: every id-0
  # element of the momentum lies below every id-1 element.
  mu = np.asarray(state[0].inner_state.mu['w'])
  ids = np.asarray(sgg_optax.find_sgg_states(state)[0].ids['w'])
  assert mu[ids == 0].max() < mu[ids == 1].min()


@pytest.mark.parametrize('make', [
    lambda: sgg_optax.came_sgg(1e-2, cluster_momentum=False),
    lambda: sgg_optax.apollo_sgg(1e-2, rank=2),
], ids=['came_sgg update form', 'apollo_sgg'])
def test_update_form_refresh_needs_the_step(make):
  tx = make()
  with pytest.raises(ValueError, match='sgg_refresh=True'):
    tx.refresh(tx.init(_SGG_PARAMS))
