"""SGG on an 8-device mesh: state specs, sharded steps, collectives, NNX."""

import collections
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import sgg_optax
from sgg_optax._src.sharding import state_partition_specs, state_shardings
from tests import _problem
from tests._rows import rows

MODES = pytest.mark.parametrize('mode', [AxisType.Explicit, AxisType.Auto],
                                ids=['explicit', 'auto'])
_is_masked = lambda x: isinstance(x, optax.MaskedNode)
_is_spec = lambda x: isinstance(x, P)


def _abstract_params():
  return {k: jax.ShapeDtypeStruct(s, jnp.float32)
          for k, s in _problem.SHAPES.items()}


_STATIC = ('num_clusters', 'sample_size')
_CHAINS = {
    'bare': lambda: sgg_optax.sgg(),
    'chain': lambda: optax.chain(optax.scale_by_adam(), sgg_optax.sgg()),
    'masked': lambda: optax.chain(
        optax.scale_by_adam(),
        optax.masked(sgg_optax.sgg(), {'w1': True, 'b1': False, 'w2': False})),
    'inject_hyperparams': lambda: optax.chain(
        optax.scale_by_adam(),
        optax.inject_hyperparams(sgg_optax.sgg, static_args=_STATIC)(
            recluster_interval=3)),
    'with_sgg': lambda: optax.chain(
        sgg_optax.with_sgg(optax.scale_by_adam()),
        optax.add_decayed_weights(1e-4)),
    'multisteps': lambda: optax.MultiSteps(
        optax.chain(optax.scale_by_adam(), sgg_optax.sgg()), 2),
    'dynamic': lambda: sgg_optax.sgg(assignment='dynamic'),
    'adafactor_sgg': lambda: sgg_optax.adafactor_sgg(1e-3),
    'partition': lambda: optax.partition(
        {'sgg': sgg_optax.adamw_sgg(1e-3), 'plain': optax.adam(1e-3)},
        {'w1': 'sgg', 'b1': 'plain', 'w2': 'sgg'}),
}


# ------------------------------------------------------------------------------
# Spec helpers
# ------------------------------------------------------------------------------


@pytest.mark.parametrize('name', list(_CHAINS))
def test_state_specs_follow_params_wherever_sgg_sits(name):
  tx = _CHAINS[name]()
  params = _abstract_params()
  abstract = jax.eval_shape(tx.init, params)
  specs = state_partition_specs(tx, params, _problem.SPECS)

  # Same structure as the state, MaskedNodes included, one spec per array.
  assert (jax.tree.structure(specs, is_leaf=_is_masked)
          == jax.tree.structure(abstract, is_leaf=_is_masked))
  by_shape = {s: _problem.SPECS[k] for k, s in _problem.SHAPES.items()}
  for leaf, spec in zip(jax.tree.leaves(abstract), jax.tree.leaves(specs)):
    assert isinstance(spec, P) and len(spec) <= leaf.ndim
    if spec != P():  # sharded leaves are exactly the param-shaped ones
      assert by_shape[leaf.shape] == spec

  # Every SGG state: param-shaped ids sharded, statistics replicated.
  sgg_states = sgg_optax.find_sgg_states(abstract)
  sgg_specs = sgg_optax.find_sgg_states(specs)
  assert len(sgg_states) == len(sgg_specs) == 1
  state, spec = sgg_states[0], sgg_specs[0]
  assert spec.count == P() and spec.global_stat == P()
  for field in ('centres', 'scales', 'cluster_stats', 'fractions',
                'refreshes'):  # one replicated array, a row per layer
    assert getattr(spec, field) == P(), field
    assert getattr(state, field).shape[0] >= 1, field
  ids = jax.tree.leaves(state.ids)
  assert len(ids) == len(jax.tree.leaves(spec.ids))
  for key, leaf in state.ids.items():
    if _is_masked(leaf):
      assert _is_masked(spec.ids[key])
    else:
      assert leaf.dtype == jnp.uint8 and spec.ids[key] == _problem.SPECS[key]
  if name not in ('dynamic', 'masked', 'partition'):
    assert len(ids) == 2  # both weight matrices carry ids

  # Agrees with optax.tree_map_params (which also shards Adam's moments),
  # except where optax maps a parameter spec onto a leaf that is not
  # parameter-shaped (Adafactor's factored statistics): we replicate those.
  raw = optax.tree_map_params(
      tx, lambda x, s: x if _is_masked(x) else s, abstract, _problem.SPECS,
      transform_non_params=lambda _: P(), is_leaf=_is_masked)
  # optax gives one spec for a whole non-parameter subtree (SGG's per-layer
  # tuples): one per leaf, to compare leaf by leaf.
  raw = jax.tree.map(
      lambda spec, sub: jax.tree.map(lambda _: spec, sub, is_leaf=_is_masked),
      raw, abstract, is_leaf=_is_masked)
  assert (jax.tree.structure(raw, is_leaf=_is_masked)
          == jax.tree.structure(specs, is_leaf=_is_masked))
  for leaf, ours, theirs in zip(jax.tree.leaves(abstract),
                                jax.tree.leaves(specs),
                                jax.tree.leaves(raw)):
    if theirs == P() or leaf.shape in by_shape:
      assert ours == theirs
    else:
      assert name == 'adafactor_sgg' and ours == P()


def test_state_specs_reject_specs_longer_than_the_rank():
  specs = dict(_problem.SPECS, b1=P('model', None))
  with pytest.raises(ValueError, match=r"\['b1'\].*rank 1"):
    state_partition_specs(_problem.make_tx(), _abstract_params(), specs)


def test_state_shardings_mesh_and_memory_kind():
  mesh = _problem.make_mesh(AxisType.Explicit)
  tx = _problem.make_tx()
  params = _abstract_params()
  from_specs = state_shardings(tx, params, _problem.SPECS, mesh=mesh)
  from_shardings = state_shardings(tx, params,
                                   _problem.param_shardings(mesh))
  sharded_structs = jax.tree.map(
      lambda p, s: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=s),
      params, _problem.param_shardings(mesh))
  from_params = state_shardings(tx, sharded_structs)
  with jax.set_mesh(mesh):
    from_set_mesh = state_shardings(tx, params, _problem.SPECS)
  assert from_specs == from_shardings == from_params == from_set_mesh
  with pytest.raises(ValueError, match='No mesh'):
    state_shardings(tx, params, _problem.SPECS)

  host = state_shardings(tx, params, _problem.SPECS, mesh=mesh,
                         ids_memory_kind='pinned_host')
  kinds = collections.Counter(
      (s.memory_kind, x.dtype == jnp.uint8) for s, x in zip(
          jax.tree.leaves(host), jax.tree.leaves(jax.eval_shape(tx.init,
                                                                params))))
  # Only the two uint8 id arrays are on the host: not Adam's count, mu and
  # nu (7 leaves), nor SGG's count, global statistic and 5 per-layer
  # statistics (7 leaves, whatever the number of layers).
  assert kinds == {('pinned_host', True): 2, ('device', False): 14}


# ------------------------------------------------------------------------------
# Sharded training
# ------------------------------------------------------------------------------


@functools.cache
def _reference():
  params, state, losses = _problem.single_device_run(3 * _problem.INTERVAL)
  return jax.device_get((params, state)), losses


def _shardings(tree):
  return jax.tree.map(lambda x: x.sharding, tree)


def _padded_specs(tree, like=None):
  """The specs of shardings (or of ``.sharding``), padded to the rank."""
  like = tree if like is None else like
  def pad(x, a):
    spec = getattr(x, 'sharding', x).spec
    return tuple(spec) + (None,) * (a.ndim - len(spec))
  return jax.tree.map(pad, tree, like)


def _assert_equivalent(actual, expected, like):
  """Same sharding leaf by leaf (``P()`` and ``P(None, None)`` are)."""
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e, x in zip(jax.tree.leaves(actual), jax.tree.leaves(expected),
                     jax.tree.leaves(like)):
    assert a.is_equivalent_to(e, x.ndim), (a, e)


@MODES
def test_sharded_steps_keep_shardings_and_match_single_device(mode):
  mesh = _problem.make_mesh(mode)
  tx = _problem.make_tx()
  p_sh = _problem.param_shardings(mesh)
  d_sh = NamedSharding(mesh, _problem.DATA_SPEC)
  step_fn = _problem.train_step(tx)
  with jax.set_mesh(mesh):
    params = jax.device_put(_problem.init_params(), p_sh)
    s_sh = state_shardings(tx, params)
    state = jax.jit(tx.init, out_shardings=s_sh)(params)
    assert _shardings(state) == s_sh
    x, y = jax.device_put(_problem.batch(0), d_sh)

    # The update keeps the state's sharding by itself, without out_shardings
    # forcing it: as types in explicit mode, after propagation in auto mode.
    free = jax.jit(step_fn, in_shardings=(p_sh, s_sh, d_sh, d_sh))
    out_sh = free.lower(params, state, x, y).compile().output_shardings
    _assert_equivalent(out_sh[1], s_sh, state)
    _assert_equivalent(out_sh[0], p_sh, params)
    if mode == AxisType.Explicit:
      typed = jax.eval_shape(step_fn, params, state, x, y)[1]
      assert _padded_specs(typed) == _padded_specs(s_sh, state)

    step = jax.jit(step_fn, in_shardings=(p_sh, s_sh, d_sh, d_sh),
                   out_shardings=(p_sh, s_sh, NamedSharding(mesh, P())),
                   donate_argnums=(0, 1))
    losses = []
    for t in range(3 * _problem.INTERVAL):  # refreshes at steps 2, 4, 6
      x, y = jax.device_put(_problem.batch(t), d_sh)
      old = jax.tree.leaves((params, state))
      params, state, value = step(params, state, x, y)
      losses.append(float(value))
      assert all(a.is_deleted() for a in old)  # donated
      _assert_equivalent(_shardings(state), s_sh, state)
      _assert_equivalent(_shardings(params), p_sh, params)
      if mode == AxisType.Explicit:
        types = jax.tree.map(jax.typeof, state)
        assert _padded_specs(types) == _padded_specs(s_sh, state)
    assert step._cache_size() == 1

  (ref_params, ref_state), ref_losses = _reference()
  sgg_state, ref_sgg = state[1], ref_state[1]
  assert int(sgg_state.count) == 3 * _problem.INTERVAL
  # the refreshes did something
  assert not np.allclose(rows(ref_sgg.scales), 1.0)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(sgg_state.ids),
               ref_sgg.ids)
  for field in ('scales', 'centres', 'fractions', 'cluster_stats',
                'global_stat'):
    np.testing.assert_allclose(getattr(sgg_state, field),
                               getattr(ref_sgg, field), rtol=1e-4,
                               atol=1e-6, err_msg=field)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4,
                                 atol=1e-6), jax.device_get(params),
               ref_params)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-4)


# ------------------------------------------------------------------------------
# Collectives in the compiled step
# ------------------------------------------------------------------------------

_COLLECTIVES = ('all-gather', 'all-reduce', 'all-to-all', 'reduce-scatter',
                'collective-permute', 'collective-broadcast',
                'ragged-all-to-all')
_INSTR = re.compile(
    r'^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<type>.+?)\s'
    r'(?P<op>[a-z][a-z\-]*)\((?P<rest>.*)$')
_ARRAY = re.compile(r'\b[a-z]+[0-9]*\[([0-9,]*)\]')
_CALLS = re.compile(r'(?:calls|to_apply|body|condition|true_computation|'
                    r'false_computation)=%?([\w.\-]+)')
_BRANCHES = re.compile(r'branch_computations=\{([^}]*)\}')


def collectives(hlo: str) -> list[dict]:
  """Every collective of an HLO module, where it runs and its array sizes.

  Args:
    hlo: ``jit(f).lower(...).compile().as_text()``.

  Returns:
    One dict per collective: ``op`` (e.g. ``'all-gather'``; async ``-start``
    halves counted once), ``sizes`` (elements of each array in its result),
    ``numel`` (elements it delivers to each device) and ``where``:
    ``'every step'``, or ``'branch i of <conditional>'`` when it runs only
    inside branch ``i`` of a conditional (``lax.cond`` lowers its false
    branch to 0 and its true branch to 1).
  """
  comps, current = {}, None
  for line in hlo.splitlines():
    head = re.match(r'^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$', line)
    if head and not line.startswith(' '):
      current = head.group(1)
      comps[current] = []
    elif current is not None and line.strip():
      comps[current].append(line)
  callees = {c: set() for c in comps}
  branches = []  # (conditional name, branch index, computation)
  for c, lines in comps.items():
    for line in lines:
      callees[c].update(_CALLS.findall(line))
      m = _BRANCHES.search(line)
      if m:
        cond = _INSTR.match(line).group('name')
        for i, b in enumerate(m.group(1).split(',')):
          branches.append((cond, i, b.strip().lstrip('%')))
          callees[c].add(b.strip().lstrip('%'))

  def reach(root):
    seen, todo = set(), [root]
    while todo:
      c = todo.pop()
      if c not in seen and c in comps:
        seen.add(c)
        todo.extend(callees[c])
    return seen

  owner = {}
  for cond, i, b in branches:
    for c in reach(b):
      owner.setdefault(c, f'branch {i} of {cond}')
  found = []
  for c, lines in comps.items():
    for line in lines:
      m = _INSTR.match(line)
      if not m:
        continue
      op = m.group('op')
      base = op.removesuffix('-start')
      if base not in _COLLECTIVES:
        continue
      sizes = [int(np.prod([int(d) for d in dims.split(',') if d]))
               for dims in _ARRAY.findall(m.group('type'))]
      # An async ``-start`` returns its operands beside its result.
      numel = max(sizes) if op.endswith('-start') else sum(sizes)
      found.append({'op': base, 'sizes': sizes, 'numel': numel,
                    'where': owner.get(c, 'every step'), 'name': m['name']})
  return found


def _compiled_update_hlo(tx, mode, params=None, specs=None, **extra_args):
  """The compiled optimizer step (update + apply) on the 4 x 2 mesh."""
  params = _problem.init_params() if params is None else params
  specs = _problem.SPECS if specs is None else specs
  mesh = _problem.make_mesh(mode)
  p_sh = {k: NamedSharding(mesh, s) for k, s in specs.items()}
  with jax.set_mesh(mesh):
    params = jax.device_put(params, p_sh)
    s_sh = state_shardings(tx, params)
    state = jax.jit(tx.init, out_shardings=s_sh)(params)

    def update(grads, state, params):
      updates, state = tx.update(grads, state, params, **extra_args)
      return optax.apply_updates(params, updates), state

    step = jax.jit(update, in_shardings=(p_sh, s_sh, p_sh),
                   out_shardings=(p_sh, s_sh))
    return step.lower(params, state, params).compile().as_text()


@MODES
def test_refresh_collectives_move_only_the_sample(mode):
  """The optimizer step, refresh branch included, gathers no parameter."""
  hlo = _compiled_update_hlo(_problem.make_tx(), mode)
  found = collectives(hlo)
  bound = _problem.NUM_GROUPS * _problem.SAMPLE
  smallest_shard = min(np.prod(s) for s in _problem.SHAPES.values()
                       if len(s) == 2) // len(jax.devices())
  assert bound < smallest_shard  # even a per-device shard would show
  assert found  # something assembles the replicated sample
  assert 'conditional' in hlo  # the refresh is compiled in
  for c in found:
    assert c['numel'] <= bound, c


@MODES
def test_sample_collectives_for_a_3d_param_sharded_on_its_leading_axis(
    mode):
  """Expert-style ``(E, d, f)`` weight, experts on 'data', f on 'model'."""
  params = {'experts': np.random.default_rng(0).normal(
      size=(8, 64, 32)).astype(np.float32)}
  sample = 64
  tx = sgg_optax.sgg(recluster_interval=2, sample_size=sample)
  hlo = _compiled_update_hlo(tx, mode, params,
                             {'experts': P('data', None, 'model')})
  found = collectives(hlo)
  assert found
  for c in found:  # the shard is 8 * 64 * 32 / 8 = 2048 elements
    assert c['numel'] <= sample, c


def _every_step(tx, mode):
  """(op, elements) of each collective that runs on every step."""
  found = collectives(_compiled_update_hlo(tx, mode))
  return sorted((c['op'], c['numel']) for c in found
                if c['where'] == 'every step')


_FORMS = {
    'momentum form': lambda: sgg_optax.with_sgg(
        optax.scale_by_adam(), recluster_interval=_problem.INTERVAL,
        sample_size=_problem.SAMPLE),
    'chain link': lambda: optax.chain(
        optax.scale_by_adam(), sgg_optax.sgg(
            recluster_interval=_problem.INTERVAL,
            sample_size=_problem.SAMPLE)),
}


@MODES
@pytest.mark.parametrize('form', list(_FORMS))
def test_steps_without_refresh_communicate_as_the_base_optimizer(form, mode):
  """Beyond Adam's own step, every collective is inside the refresh.

  The sample is drawn inside the refresh's conditional, so a step that does
  not refresh sends nothing more than the base optimizer's step.
  """
  lr = optax.scale_by_learning_rate(1e-2)
  base = _every_step(optax.chain(optax.scale_by_adam(), lr), mode)
  tx = optax.chain(_FORMS[form](), lr)
  assert _every_step(tx, mode) == base
  found = collectives(_compiled_update_hlo(tx, mode))
  refresh = [c for c in found if c['where'].startswith('branch 1')]
  assert refresh  # the sample is assembled in the refresh branch
  bound = _problem.NUM_GROUPS * _problem.SAMPLE
  assert all(c['numel'] <= bound for c in refresh), refresh


@MODES
@pytest.mark.parametrize('form', list(_FORMS))
def test_loop_decided_steps_communicate_as_adam_or_move_the_sample(form,
                                                                   mode):
  """``sgg_refresh=False``: a step with no conditional sends what Adam's
  sends; ``True``: the refresh, inline, moves only the sample."""
  lr = optax.scale_by_learning_rate(1e-2)
  tx = optax.chain(_FORMS[form](), lr)
  adam = collectives(_compiled_update_hlo(
      optax.chain(optax.scale_by_adam(), lr), mode))
  plain = _compiled_update_hlo(tx, mode, sgg_refresh=False)
  assert not re.search(r'\sconditional\(', plain)
  key = lambda cs: sorted((c['op'], c['numel']) for c in cs)
  assert key(collectives(plain)) == key(adam)
  found = collectives(_compiled_update_hlo(tx, mode, sgg_refresh=True))
  extra = [c for c in found if (c['op'], c['numel']) not in key(adam)]
  assert extra  # the sample is assembled
  bound = _problem.NUM_GROUPS * _problem.SAMPLE
  assert all(c['numel'] <= bound for c in extra), extra


@MODES
@pytest.mark.parametrize('form', ['chain', 'momentum'])
def test_stacked_layer_axis_sharded_plain_steps_communicate_as_adam(form,
                                                                    mode):
  """Layers stacked on a 'data'-sharded axis: the refreshed ``(L, K)``
  statistics stay replicated (under auto axes by a sharding constraint on
  the refresh's results) without a collective on the steps that do not
  refresh."""
  params = {'w': np.random.default_rng(0).normal(
      size=(8, 16, 32)).astype(np.float32)}
  specs = {'w': P('data', None, 'model')}
  kw = dict(recluster_interval=2, sample_size=64, stacked_layers=True)
  lr = optax.scale_by_learning_rate(1e-2)
  tx = (optax.chain(optax.scale_by_adam(), sgg_optax.sgg(**kw), lr)
        if form == 'chain' else
        optax.chain(sgg_optax.with_sgg(optax.scale_by_adam(), **kw), lr))
  every = lambda t: sorted(
      (c['op'], c['numel']) for c in collectives(
          _compiled_update_hlo(t, mode, params, specs))
      if c['where'] == 'every step')
  assert every(tx) == every(optax.chain(optax.scale_by_adam(), lr))


def test_collective_parser_sees_a_parameter_gather():
  """Guards the parser: a full gather of w1 shows up, with its size, in
  the branch that runs it. (That a real step has some collectives is
  asserted by test_refresh_collectives_move_only_the_sample.)"""
  mesh = _problem.make_mesh(AxisType.Auto)
  p_sh = _problem.param_shardings(mesh)
  gather = jax.jit(lambda p: jax.lax.cond(
      p['w2'][0, 0] > 0, lambda: jnp.sum(jnp.sort(p['w1'], axis=0)),
      lambda: 0.0), in_shardings=(p_sh,))
  with jax.set_mesh(mesh):
    params = jax.device_put(_problem.init_params(), p_sh)
    found = collectives(gather.lower(params).compile().as_text())
  shard = np.prod(_problem.SHAPES['w1']) // 8
  big = [c for c in found if c['numel'] >= shard]
  assert big and all(c['where'].startswith('branch 1') for c in big), found


# ------------------------------------------------------------------------------
# Stacked layers sharded on their layer axis (explicit axes)
# ------------------------------------------------------------------------------


@pytest.mark.parametrize('spec', [P('data', None, None),
                                  P('data', 'model', None)], ids=str)
@pytest.mark.parametrize('assignment', ['frozen', 'dynamic'])
@pytest.mark.parametrize('k', [3, 9], ids=['select_chain', 'gather'])
@pytest.mark.parametrize('form', ['chain', 'momentum'])
def test_stacked_layers_sharded_on_the_layer_axis(form, k, assignment, spec):
  """A stacked parameter whose layer axis is sharded, under explicit axes:
  the per-layer scales and thresholds are sharded like that axis (explicit
  sharding rejects a replicated ``(L, 1, 1)`` operand beside it), for the
  select chain (K <= 8; it failed on a ``(4, 1, 1)`` parameter, whose
  shape is the per-layer values') and the gather (K > 8). Found by the long
  Hypothesis profile; the updates match an unsharded run."""
  kw = dict(num_clusters=k, recluster_interval=2, beta3=0.5,
            assignment=assignment,
            stacked_layers={'w': True, 'v': True, 'b': False})
  def make():
    if form == 'chain':
      return optax.chain(optax.scale_by_adam(), sgg_optax.sgg(**kw))
    return sgg_optax.with_sgg(optax.scale_by_adam(), **kw)
  rng = np.random.default_rng(0)
  params = {'w': jnp.asarray(rng.normal(size=(4, 6, 8)), jnp.float32),
            'v': jnp.asarray(rng.normal(size=(4, 1, 1)), jnp.float32),
            'b': jnp.asarray(rng.normal(size=(8, 6)), jnp.float32)}
  grads = [jax.tree.map(lambda x: jnp.asarray(
      rng.normal(size=x.shape) * np.linspace(0.1, 3, x.shape[-1]),
      jnp.float32), params) for _ in range(5)]

  def run(tx, put):
    state = jax.jit(tx.init)(put(params))
    step = jax.jit(tx.update)
    outs = []
    for g in grads:
      u, state = step(put(g), state, put(params))
      outs.append(jax.device_get(u))
    return outs, state, step

  expected, _, _ = run(make(), lambda t: t)
  mesh = jax.make_mesh((4, 2), ('data', 'model'),
                       axis_types=(AxisType.Explicit,) * 2)
  shardings = {'w': NamedSharding(mesh, spec),
               'v': NamedSharding(mesh, P('data', None, None)),
               'b': NamedSharding(mesh, P('model', None))}
  with jax.set_mesh(mesh):
    actual, state, step = run(make(), lambda t: jax.device_put(t, shardings))
    assert step._cache_size() == 1
  [sgg_state] = sgg_optax.find_sgg_states(state)
  assert np.abs(rows(sgg_state.scales) - 1).max() > 0  # the refreshes acted
  for a, e in zip(actual, expected):
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5,
                                   atol=1e-7), a, e)


@pytest.mark.parametrize('form', ['chain', 'momentum'])
@pytest.mark.parametrize('mode', [AxisType.Explicit, AxisType.Auto],
                         ids=['explicit', 'auto'])
def test_step_without_out_shardings_compiles_once(form, mode):
  """The state from ``state_shardings`` and the state a step returns share
  one compiled step. Under explicit axes a step returns replicated arrays
  spelled ``P(None, None)``, which ``state_shardings`` now spells the same
  way (it gave ``P()``, and the second call compiled the step again)."""
  mesh = jax.make_mesh((2, 2), ('data', 'model'), axis_types=(mode,) * 2,
                       devices=jax.devices()[:4])
  specs = {'w': P('data', 'model'), 'v': P('model', 'data')}
  rng = np.random.default_rng(0)
  params = {k: rng.normal(size=(8, 4)).astype(np.float32) for k in specs}
  tx = (optax.chain(optax.scale_by_adam(), sgg_optax.sgg(
      recluster_interval=2)) if form == 'chain' else sgg_optax.with_sgg(
          optax.scale_by_adam(), recluster_interval=2))
  with jax.set_mesh(mesh):
    params = {k: jax.device_put(v, NamedSharding(mesh, specs[k]))
              for k, v in params.items()}
    shardings = sgg_optax.state_shardings(tx, params)
    state = jax.jit(tx.init, out_shardings=shardings)(params)
    step = jax.jit(tx.update)
    for _ in range(3):  # plain, refresh, plain
      _, state = step(params, state, params)
  assert step._cache_size() == 1


def test_state_shardings_of_single_device_parameters_are_replicated():
  mesh = jax.make_mesh((2, 2), ('data', 'model'), devices=jax.devices()[:4])
  params = {'w': jnp.ones((8, 4)), 'b': jnp.zeros(4)}  # single-device arrays
  tx = optax.chain(optax.scale_by_adam(), sgg_optax.sgg())
  shardings = sgg_optax.state_shardings(tx, params, mesh=mesh)
  leaves = jax.tree.leaves(shardings)
  assert leaves and all(s.mesh == mesh and s.is_fully_replicated
                        for s in leaves)
