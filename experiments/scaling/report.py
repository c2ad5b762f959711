"""Comparisons with Adam, the targets they are held to, and the tables.

A row is one model on one mesh: a folder of variant records
(`measure.measure_pair`), Adam's among them. `compare` sets each SGG
variant beside Adam's train step on the same mesh; `summary_table` (the
table of docs/scaling.md) and `details_table` (results.md) print them.
"""

from __future__ import annotations

import collections
import json
import math
import pathlib
from typing import Any

from experiments.scaling import hlo, programs

# What the numbers must show (1 MB = 10^6 bytes).
MEMORY_SLACK = 0.01  # args + temps <= Adam's + ids' floor + 1% of Adam's
REFRESH_TRAFFIC = 1e6  # extra collective bytes per device, refresh step
STEP_PLAIN, STEP_OWN = 1.01, 1.05  # estimated step time / Adam's
COMPILE_OWN, COMPILE_PAIR = 1.2, 1.5  # lowering + compile / Adam's
PRIMARY = 'TPU v5p'  # the accelerator of the summary's step-time column


def load_row(folder: pathlib.Path) -> dict[str, dict[str, Any]]:
  """``variant -> record`` of a row folder (records that compiled)."""
  out = {}
  for path in sorted(folder.glob('*.json')):
    rec = json.loads(path.read_text())
    if rec.get('status', 'ok') == 'ok':
      out[rec['variant']] = rec
  return out


def _numel(arrays: list[Any]) -> int:
  return max((math.prod(shape) for _, shape in arrays), default=0)


def _each(collectives: list[dict[str, Any]]
          ) -> list[tuple[tuple[str, str, int], dict[str, Any]]]:
  return [((c['kind'], repr(c['arrays']), c['group']), c)
          for c in collectives for _ in range(c.get('count', 1))]


def extra_collectives(rec: dict[str, Any]) -> list[dict[str, Any]]:
  """Collectives of ``rec``'s program beyond Adam's (multiset difference)."""
  left = collections.Counter(k for k, _ in _each(rec['adam']['collectives']))
  extra = []
  for key, c in _each(rec['collectives']):
    if left[key]:
      left[key] -= 1
    else:
      extra.append(c)
  return extra


def parameter_gathers(rec: dict[str, Any]) -> list[dict[str, Any]]:
  """Extra collectives delivering an array as large as a grouped parameter.

  Adam's own collectives (the FSDP gathers of the forward pass) are not
  counted: only what SGG adds, array by array, against the smallest
  parameter SGG groups, whole.
  """
  smallest = min((math.prod(g['shape']) for g in rec['grouped']),
                 default=0)
  return [c for c in extra_collectives(rec)
          if smallest and _numel(c['arrays']) >= smallest]


def _traffic(collectives: list[dict[str, Any]]) -> float:
  return sum(c['traffic'] * c.get('count', 1) for c in collectives)


def compare(rec: dict[str, Any]) -> dict[str, Any]:
  """A variant against Adam's train step on the same mesh."""
  adam = rec['adam']
  adam_mem = adam['memory']['args_plus_temps']
  extra_mem = rec['memory']['args_plus_temps'] - adam_mem
  every = [c for c in rec['collectives'] if c['where'] == 'every step']
  step = {name: rec['roofline'][name]['step_s']
          / _step_time(adam, name) for name in rec['roofline']}
  return {
    'extra_memory': extra_mem,
    'ids_floor': rec['ids_floor_bytes'],
    'memory_margin': (extra_mem - rec['ids_floor_bytes']) / adam_mem,
    'same_collectives': (hlo.signature(every)
                         == hlo.signature(adam['collectives'])),
    'conditionals': len(rec['conditionals']),
    'conditional_operand_bytes': sum(c['operand_bytes']
                                     for c in rec['conditionals']),
    'extra_traffic': _traffic(rec['collectives'])
    - _traffic(adam['collectives']),
    'extra_collectives': len(extra_collectives(rec)),
    'parameter_gathers': parameter_gathers(rec),
    'step_ratio': step,
    'flops_ratio': rec['cost']['flops'] / adam['cost']['flops'],
    'bytes_ratio': (rec['cost']['bytes_accessed']
                    / adam['cost']['bytes_accessed']),
    'compile_ratio': rec['timing']['cpu_ratio'],  # CPU time: robust to load
    'compile_wall_ratio': rec['timing']['ratio'],
  }


def _step_time(adam: dict[str, Any], accelerator: str) -> float:
  from experiments.scaling.measure import roofline

  traffic = _traffic(adam['collectives'])
  return roofline(adam['cost']['flops'], adam['cost']['bytes_accessed'],
                  traffic)[accelerator]['step_s']


def _mark(ok: bool, miss: str = '') -> str:
  return 'yes' if ok else f'**no**{f" ({miss})" if miss else ""}'


def _ratio_cell(value: float, limit: float) -> str:
  text = f'{value:.3f}x'
  return text if value <= limit else f'**{text}** (> {limit}x)'


def _mesh_text(mesh: dict[str, int]) -> str:
  return ' x '.join(str(mesh.get(a, 1)) for a in ('data', 'fsdp', 'model'))


def summary_rows(rows: dict[str, dict[str, dict[str, Any]]]
                 ) -> list[dict[str, Any]]:
  """One entry per (row, SGG form) with every target's value."""
  out = []
  for row, recs in rows.items():
    if 'adam' not in recs:
      continue
    adam = recs['adam']
    for form in ('update', 'momentum'):
      get = {v.split('_', 1)[1]: compare(recs[v]) for v in recs
             if v.startswith(form + '_')}
      if not get:
        continue
      pair = None
      if 'plain' in get and 'refresh' in get:
        pair = get['plain']['compile_ratio'] + get['refresh']['compile_ratio']
      out.append({'row': row, 'form': form, 'adam': adam,
                  'variants': get, 'pair_compile': pair,
                  'program_pair_compile': (
                    get['plain']['compile_ratio']
                    + get['refresh_program']['compile_ratio']
                    if 'plain' in get and 'refresh_program' in get
                    else None)})
  return out


def summary_table(rows: dict[str, dict[str, dict[str, Any]]]) -> str:
  """The targets, per model, mesh and SGG form (Markdown)."""
  head = ('| model (params) | devices: data x FSDP x tensor | SGG form '
          '| memory: extra over Adam / ids floor (MiB per device) '
          '| plain step: Adam\'s collectives, no conditional '
          '| refresh step: extra collective traffic per device '
          f'| est. step time vs Adam ({PRIMARY}): plain / own schedule '
          '| compile vs Adam (CPU time): own schedule / loop pair |')
  lines = [head, '|' + '---|' * 8]
  for r in summary_rows(rows):
    a, v = r['adam'], r['variants']
    params = f'{r["row"].split("_")[0]} ({a["model"]["n_params"] / 1e9:.2f}B)'
    mesh = f'{a["devices"]}: {_mesh_text(a["mesh"])}'
    mem = '; '.join(
      f'{k} {c["extra_memory"] / 2**20:.1f} / {c["ids_floor"] / 2**20:.1f}'
      + ('' if c['memory_margin'] <= MEMORY_SLACK
         else f' (**+{100 * c["memory_margin"]:.1f}%**)')
      for k, c in v.items() if k in ('plain', 'own'))
    plain = v.get('plain')
    plain_ok = ('-' if plain is None else _mark(
      plain['same_collectives'] and not plain['conditionals'],
      f'{plain["extra_collectives"]} extra, '
      f'{plain["conditionals"]} conditionals'))
    ref = v.get('refresh')
    ref_cell = '-' if ref is None else (
      f'{ref["extra_traffic"] / 1e3:,.0f} kB'
      + ('' if ref['extra_traffic'] <= REFRESH_TRAFFIC else ' (**> 1 MB**)')
      + ('' if not ref['parameter_gathers'] else ' **parameter gathered**'))
    step = ' / '.join(
      '-' if k not in v else _ratio_cell(v[k]['step_ratio'][PRIMARY], lim)
      for k, lim in (('plain', STEP_PLAIN), ('own', STEP_OWN)))
    own = v.get('own')
    comp = ' / '.join([
      '-' if own is None else _ratio_cell(own['compile_ratio'], COMPILE_OWN),
      '-' if r['pair_compile'] is None
      else _ratio_cell(r['pair_compile'], COMPILE_PAIR)])
    if r['program_pair_compile'] is not None:
      comp += (' (plain + refresh program: '
               f'{_ratio_cell(r["program_pair_compile"], COMPILE_PAIR)})')
    lines.append(f'| {params} | {mesh} | {r["form"]} | {mem} | {plain_ok} '
                 f'| {ref_cell} | {step} | {comp} |')
  return '\n'.join(lines)


def details_table(rows: dict[str, dict[str, dict[str, Any]]]) -> str:
  """Every variant's figures (Markdown)."""
  head = ('| row | program | args + temps (MiB) | extra over Adam (MiB) '
          '| collectives every step: count, traffic (MiB) '
          '| in conditionals: count, traffic (kB) '
          '| conditionals: count, operands (MiB) | FLOPs, HBM bytes vs Adam '
          '| est. step vs Adam: v5p, H100 '
          '| lower + compile, CPU s (wall s) | Adam\'s, same process |')
  lines = [head, '|' + '---|' * 11]
  for row, recs in rows.items():
    for name in programs.VARIANTS:
      if name not in recs:
        continue
      rec, c = recs[name], compare(recs[name])
      # The refresh program is not a train step: its memory is its own.
      extra = ('-' if rec['program'] == 'refresh'
               else f'{c["extra_memory"] / 2**20:,.2f}')
      by = rec['collectives_by_kind']
      ev = by['every_step']
      br = by['in_conditionals']
      t = rec['timing']
      steps = ', '.join(f'{x:.3f}' for x in c['step_ratio'].values())
      lines.append(
        f'| {row} | {rec["label"]} '
        f'| {rec["memory"]["args_plus_temps"] / 2**20:,.1f} '
        f'| {extra} '
        f'| {sum(k["count"] for k in ev.values())}, '
        f'{sum(k["traffic"] for k in ev.values()) / 2**20:,.1f} '
        f'| {sum(k["count"] for k in br.values())}, '
        f'{sum(k["traffic"] for k in br.values()) / 1e3:,.0f} '
        f'| {c["conditionals"]}, '
        f'{c["conditional_operand_bytes"] / 2**20:,.2f} '
        f'| {c["flops_ratio"]:.4f}, {c["bytes_ratio"]:.4f} | {steps} '
        f'| {t["lower_cpu_s"] + t["compile_cpu_s"]:.0f} '
        f'({t["lower_s"] + t["compile_s"]:.0f}) '
        f'| {t["adam_lower_cpu_s"] + t["adam_compile_cpu_s"]:.0f} '
        f'({t["adam_lower_s"] + t["adam_compile_s"]:.0f}) |')
  return '\n'.join(lines)


_MODULES = ('sampling.py', 'transform.py', 'kmeans.py', 'quantiles.py',
            'scaling.py')


def sources_table(rows: dict[str, dict[str, dict[str, Any]]]) -> str:
  """Where each SGG program's compiled instructions come from (Markdown).

  Compile time grows with the instruction count: the columns split SGG's
  own instructions by sgg_optax module, beside the program's total and
  Adam's.
  """
  head = ('| row | program | HLO instructions (Adam\'s) | SGG\'s own | '
          + ' | '.join(_MODULES) + ' | largest SGG function |')
  lines = [head, '|' + '---|' * (5 + len(_MODULES))]
  for row, recs in rows.items():
    adam = recs.get('adam', {}).get('hlo_instructions')
    for name in programs.VARIANTS:
      rec = recs.get(name)
      if (rec is None or rec['form'] is None or adam is None
          or 'hlo_instructions' not in rec):
        continue
      by = rec['hlo_instructions']['by_source']
      sgg = {k: n for k, n in by.items() if k.startswith('sgg_optax/')}
      per = {m: sum(n for k, n in sgg.items()
                    if k.split('/')[1].split(':')[0] == m) for m in _MODULES}
      top = max(sgg, key=sgg.get) if sgg else '-'
      lines.append(
        f'| {row} | {rec["label"]} | {rec["hlo_instructions"]["total"]:,} '
        f'({adam["total"]:,}) | {sum(sgg.values()):,} | '
        + ' | '.join(f'{per[m]:,}' for m in _MODULES)
        + f' | {top.removeprefix("sgg_optax/")} ({sgg.get(top, 0):,}) |')
  return '\n'.join(lines)
