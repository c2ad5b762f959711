"""`python -m experiments.podscale`: the compiled train step, read per device.

Fast: a one-layer LLaMA on the test session's 8 fake CPU devices, a
data x FSDP x tensor mesh of 2 x 2 x 2, Adam's train step and three SGG
programs compiled once for the module (XLA's backend at -O0, which leaves
the HLO, its memory and collectives unchanged). The invariants of the pod
measurement hold there: per-device memory within Adam's plus the ids'
floor plus 1%, a loop-decided plain step with exactly Adam's collectives
and no conditional, no parameter-sized array gathered; the table of
docs/scaling.md is what the committed records give. Slow: the paper's 1B
on 64 devices, through the command.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from experiments.scaling import cli, hlo, measure, programs, report

ROOT = pathlib.Path(__file__).resolve().parents[2]
RESULTS = ROOT / 'experiments' / 'results' / 'podscale'
MESH = 'data=2,fsdp=2,model=2'
FAST = {'xla_backend_optimization_level': 0}
VOCAB = 512


def _cfg_of(form):
  return programs.train_config('tiny', MESH, form, batch_size=16,
                               seq_len=64, n_layers=1, dim=128)


@pytest.fixture(scope='module')
def adam():
  return measure.adam_reference(_cfg_of, FAST, VOCAB)


@pytest.fixture(scope='module')
def measured(adam):
  return {name: measure.measure_variant(_cfg_of, programs.VARIANTS[name],
                                        adam, FAST, VOCAB)
          for name in ('update_plain', 'momentum_plain', 'momentum_refresh')}


@pytest.mark.parametrize('name', ['update_plain', 'momentum_plain'])
def test_memory_is_adams_plus_the_ids_floor(measured, name):
  rec = measured[name]
  c = report.compare(rec)
  # One uint8 id per element of every grouped parameter, as sharded.
  assert rec['grouped'] and all(g['ids_dtype'] == 'uint8'
                                for g in rec['grouped'])
  assert c['ids_floor'] == sum(
    g['ids_bytes'] for g in rec['grouped']) > 0
  # The ids are arguments of the step; temporaries may differ either way.
  args = rec['memory']['argument'] - rec['adam']['memory']['argument']
  assert args >= c['ids_floor']
  assert c['memory_margin'] <= report.MEMORY_SLACK, c


@pytest.mark.parametrize('name', ['update_plain', 'momentum_plain'])
def test_the_plain_step_communicates_as_adam(measured, name):
  rec = measured[name]
  every = [c for c in rec['collectives'] if c['where'] == 'every step']
  assert every == rec['collectives']
  assert hlo.signature(every) == hlo.signature(rec['adam']['collectives'])
  assert rec['conditionals'] == []
  assert report.compare(rec)['same_collectives']


def test_the_refresh_step_adds_only_small_collectives(measured):
  rec = measured['momentum_refresh']
  extra = report.extra_collectives(rec)
  assert extra and {c['kind'] for c in extra} == {'all-reduce'}
  assert report.parameter_gathers(rec) == []
  assert 0 < report.compare(rec)['extra_traffic'] <= report.REFRESH_TRAFFIC


def test_a_parameter_sized_gather_is_seen(measured):
  """The check is not blind: a planted gather of a grouped parameter's
  shape, beyond Adam's collectives, is reported."""
  rec = json.loads(json.dumps(measured['momentum_plain']))
  shape = rec['grouped'][0]['shape']
  rec['collectives'].append({'kind': 'all-gather', 'arrays': [['f32', shape]],
                             'group': 8, 'where': 'every step',
                             'bytes': 0, 'traffic': 0, 'count': 1})
  assert len(report.parameter_gathers(rec)) == 1
  assert not report.compare(rec)['same_collectives']


def test_the_record_is_the_compiled_programs(adam, measured):
  rec = measured['momentum_plain']
  assert rec['devices'] == 8 and rec['mesh'] == {'data': 2, 'fsdp': 2,
                                                 'model': 2}
  assert rec['optimizer'] == 'adam_sgg_momentum'
  mem = rec['memory']
  assert mem['args_plus_temps'] == mem['argument'] + mem['temp'] > 0
  assert rec['cost']['flops'] > adam['cost']['flops'] > 0
  est = rec['roofline']['TPU v5p']
  assert est['step_s'] == max(est['compute_s'], est['memory_s'],
                              est['collective_s']) > 0
  t = rec['timing']
  assert t['compile_s'] > 0 and t['compile_cpu_s'] > 0 and t['ratio'] > 0
  assert t['cpu_ratio'] == pytest.approx(
    (t['lower_cpu_s'] + t['compile_cpu_s'])
    / (t['adam_lower_cpu_s'] + t['adam_compile_cpu_s']))
  # The FSDP gathers of the forward pass: Adam's program communicates.
  assert 'all-gather' in rec['collectives_by_kind']['every_step']
  # Every instruction is counted once, under the code that made it.
  for r in (adam, rec, measured['momentum_refresh']):
    ins = r['hlo_instructions']
    assert sum(ins['by_source'].values()) == ins['total'] > 1000
    assert ins['by_source'].get('model', 0) > 0
  assert not any(k.startswith('sgg_optax') for k in
                 adam['hlo_instructions']['by_source'])
  refresh = measured['momentum_refresh']['hlo_instructions']['by_source']
  assert any(k.startswith('sgg_optax/sampling.py') for k in refresh)


def test_the_collective_parser_reads_async_tuple_and_mesh_forms():
  text = '\n'.join([
    'ENTRY %main (p: f32[8]) -> f32[8] {',
    '  %a = (f32[4]{0}, f32[16]{0}) all-gather-start(f32[4]{0} %p), '
    'replica_groups=[2,4]<=[8], dimensions={0}',
    '  %b = (f32[4]{0}, bf16[2,2]{1,0}) all-reduce(f32[4]{0} %x, '
    'bf16[2,2]{1,0} %y), replica_groups=mesh[\'axis_0\'=2,\'axis_1\'=4] '
    '{\'axis_0\'}, to_apply=%add',
    '  %c = f32[8]{0} all-reduce-start(f32[8]{0} %z), replica_groups={}',
    '}'])
  found = {c['name']: c for c in hlo.collectives(text, 8)}
  assert found['a']['arrays'] == [['f32', [16]]] and found['a']['group'] == 4
  assert found['a']['bytes'] == 64 and found['a']['traffic'] == 48
  assert found['b']['bytes'] == 24 and found['b']['group'] == 2
  assert found['c']['group'] == 8 and found['c']['traffic'] == 2 * 7 / 8 * 32


def test_the_docs_table_is_the_committed_records():
  rows = {p.name: report.load_row(p) for p in sorted(RESULTS.iterdir())
          if p.is_dir()}
  table = report.summary_table({k: v for k, v in rows.items() if v})
  docs = (ROOT / 'docs' / 'scaling.md').read_text()
  begin = f'<!-- table:{cli.MARKER}:begin -->\n'
  end = f'\n<!-- table:{cli.MARKER}:end -->'
  assert docs.count(begin) == docs.count(end) == 1
  block = docs.split(begin)[1].split(end)[0]
  assert block == table, ('paste the output of `python -m '
                          'experiments.podscale --from-runs`')
  assert (RESULTS / 'COMMAND.txt').exists()
  for row in rows.values():
    for rec in row.values():
      assert rec['provenance']['dirty'] is False, rec['row']


@pytest.mark.slow
def test_1b_on_64_devices_through_the_command(tmp_path):
  """The paper's 1B, FSDP over 64 fake devices: Adam and the momentum
  form's plain step, each in its own process (about 15 minutes here)."""
  row = '1b:data=1,fsdp=64,model=1'
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  subprocess.run([sys.executable, '-m', 'experiments.podscale', '--rows', row,
                  '--variants', 'adam', 'momentum_plain', '--out',
                  str(tmp_path), '--docs', ''], cwd=ROOT, env=env,
                 check=True, timeout=3600)
  recs = report.load_row(tmp_path / '1b_1x64x1')
  c = report.compare(recs['momentum_plain'])
  assert recs['momentum_plain']['model']['n_params'] > 1.3e9
  assert recs['adam']['devices'] == 64
  assert c['same_collectives'] and c['conditionals'] == 0
  assert c['memory_margin'] <= report.MEMORY_SLACK
  assert c['ids_floor'] > 0 and c['parameter_gathers'] == []
