"""`python -m experiments.podscale`: SGG's cost per chip on a simulated pod.

For each row (a model preset on a data x FSDP x tensor mesh of fake CPU
devices) and each program of `programs.VARIANTS`, one subprocess with
``--xla_force_host_platform_device_count`` set before jax loads lowers and
compiles `experiments.train`'s own train step (or the momentum form's
refresh program) from abstract state, after Adam's train step in the same
process, and writes the variant's record to ``OUT/<row>/<variant>.json``.
A record of the same code (`records.code_key`) and settings is kept, so an
interrupted command resumes and a re-run at new code redoes everything.
Then ``OUT/results.md`` and the table of docs/scaling.md (between its
``podscale`` markers) are written from the records.
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from experiments.common import cli as cli_lib
from experiments.common import records
from experiments.scaling import report

# The committed rows: the paper's 1B on 64 and 256 chips (GaLore's 1B has
# ffn_dim 5461, which no tensor axis divides: FSDP and data only), its 350M
# and LLaMA-7B's shape with a tensor axis.
ROWS = ('1b:data=1,fsdp=64,model=1', '1b:data=4,fsdp=64,model=1',
        '350m:data=2,fsdp=8,model=4', '7b:data=1,fsdp=8,model=8',
        '7b:data=2,fsdp=16,model=8')
# The order the programs are measured in: the targets' first.
RUN_ORDER = ('adam', 'momentum_plain', 'update_plain', 'momentum_refresh',
             'update_refresh', 'momentum_own', 'update_own',
             'momentum_refresh_program')
# The code that decides a record's numbers (not the tables or this driver).
CODE_PARTS = ('scaling/programs.py', 'scaling/measure.py', 'scaling/hlo.py',
              'pretraining', 'common')
DOCS = pathlib.Path('docs/scaling.md')
MARKER = 'podscale'


def parse_row(text: str) -> tuple[str, dict[str, int]]:
  """'1b:data=4,fsdp=64,model=1' -> ('1b', {'data': 4, 'fsdp': 64, ...})."""
  preset, _, mesh = text.partition(':')
  axes = dict.fromkeys(('data', 'fsdp', 'model'), 1)
  for part in mesh.split(','):
    name, _, size = part.partition('=')
    if name.strip() not in axes or not size.strip().isdigit():
      raise argparse.ArgumentTypeError(
        f'a row is PRESET:data=D,fsdp=F,model=M, got {text!r}')
    axes[name.strip()] = int(size)
  return preset.strip(), axes


def row_name(preset: str, axes: dict[str, int]) -> str:
  return f'{preset}_{axes["data"]}x{axes["fsdp"]}x{axes["model"]}'


def mesh_spec(axes: dict[str, int]) -> str:
  return ','.join(f'{a}={axes[a]}' for a in ('data', 'fsdp', 'model'))


def _settings(args: argparse.Namespace) -> dict[str, Any]:
  return {'batch_size': args.batch_size, 'seq_len': args.seq_len,
          'recluster_interval': args.recluster_interval,
          'n_layers': args.n_layers, 'dim': args.dim,
          'vocab_size': args.vocab_size}


def _current(path: pathlib.Path, key: str, settings: dict[str, Any]) -> bool:
  """Whether ``path`` holds a record of this code and these settings."""
  if not path.exists():
    return False
  import json
  rec = json.loads(path.read_text())
  return rec.get('code_key') == key and rec.get('settings') == settings


def run_worker(args: argparse.Namespace) -> None:
  """Measures one variant of one row in this process; writes its JSON."""
  import jax

  from experiments.scaling import measure, programs

  preset, axes = parse_row(args.worker[0])
  variant = programs.VARIANTS[args.worker[1]]
  if jax.device_count() != math.prod(axes.values()):
    raise SystemExit(f'{jax.device_count()} devices; the row needs '
                     f'{math.prod(axes.values())}')
  settings = _settings(args)
  overrides = {k: settings[k] for k in ('n_layers', 'dim')}

  def cfg_of(form: str | None) -> Any:
    return programs.train_config(
      preset, mesh_spec(axes), form, batch_size=args.batch_size,
      seq_len=args.seq_len, recluster_interval=args.recluster_interval,
      **overrides)

  options = ({'xla_backend_optimization_level': 0} if args.fast_backend
             else None)
  rec = measure.measure_pair(cfg_of, variant, options,
                             args.vocab_size or None)
  rec.update(status='ok', row=args.worker[0], settings=settings,
             code_key=records.code_key(list(CODE_PARTS)),
             provenance=records.provenance(args.argv))
  records.write_json(args.json, rec)


def _worker_command(args: argparse.Namespace, row: str, variant: str,
                    path: pathlib.Path) -> list[str]:
  cmd = [sys.executable, '-m', 'experiments.podscale', '--worker', row,
         variant, '--json', str(path), '--batch-size', str(args.batch_size),
         '--seq-len', str(args.seq_len), '--recluster-interval',
         str(args.recluster_interval), '--n-layers', str(args.n_layers),
         '--dim', str(args.dim), '--vocab-size', str(args.vocab_size)]
  return cmd + (['--fast-backend'] if args.fast_backend else [])


def _environment(devices: int) -> dict[str, str]:
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  flags = re.sub(r'--xla_force_host_platform_device_count=\d+', '',
                 env.get('XLA_FLAGS', ''))
  env['XLA_FLAGS'] = (f'{flags} --xla_force_host_platform_device_count='
                      f'{devices}').strip()
  root = str(records.ROOT)
  env['PYTHONPATH'] = os.pathsep.join(
    [root] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p])
  return env


def run_rows(args: argparse.Namespace) -> None:
  """Every missing (row, variant) record, one subprocess each, in order."""
  key = records.code_key(list(CODE_PARTS))
  settings = _settings(args)
  started = time.time()
  for row in args.rows:
    preset, axes = parse_row(row)
    folder = pathlib.Path(args.out) / row_name(preset, axes)
    for variant in args.variants:
      path = folder / f'{variant}.json'
      if _current(path, key, settings) and not args.force:
        print(f'{row_name(preset, axes)}/{variant}: recorded', flush=True)
        continue
      t0 = time.time()
      try:
        done = subprocess.run(
          _worker_command(args, row, variant, path), cwd=records.ROOT,
          env=_environment(math.prod(axes.values())), capture_output=True,
          text=True, timeout=args.timeout)
      except subprocess.TimeoutExpired:
        records.write_json(path, {
          'status': 'timeout', 'variant': variant, 'row': row,
          'seconds': args.timeout, 'settings': settings, 'code_key': key,
          'provenance': records.provenance(args.argv)})
        print(f'{row_name(preset, axes)}/{variant}: no result within '
              f'{args.timeout} s', flush=True)
        continue
      if done.returncode:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f'{row}/{variant} failed ({done.returncode})')
      warnings = [line for line in done.stderr.splitlines()
                  if 'rematerialization' in line]
      if warnings:
        import json
        rec = json.loads(path.read_text())
        rec['xla_warnings'] = warnings[:20]
        records.write_json(path, rec)
      print(f'{row_name(preset, axes)}/{variant}: {time.time() - t0:.0f} s',
            flush=True)
  print(f'all rows: {time.time() - started:.0f} s', flush=True)


def write_tables(out: pathlib.Path, docs: pathlib.Path | None) -> str:
  """results.md of ``out`` and the docs block, from the records."""
  rows = {p.name: report.load_row(p) for p in sorted(out.iterdir())
          if p.is_dir()}
  rows = {k: v for k, v in rows.items() if v}
  summary = report.summary_table(rows)
  text = ('# SGG on a simulated pod\n\n' + summary + '\n\n## Every program'
          '\n\n' + report.details_table(rows) + '\n\n## Where the compiled '
          'instructions come from\n\n' + report.sources_table(rows) + '\n')
  (out / 'results.md').write_text(text)
  if docs is not None:
    replace_block(docs, MARKER, summary)
  return summary


def replace_block(path: pathlib.Path, name: str, table: str) -> None:
  """Writes ``table`` between ``<!-- table:NAME:begin/end -->`` markers."""
  text = path.read_text()
  begin, end = f'<!-- table:{name}:begin -->', f'<!-- table:{name}:end -->'
  if begin not in text or end not in text:
    raise SystemExit(f'{path} has no {begin} ... {end} markers')
  head, rest = text.split(begin, 1)
  _, tail = rest.split(end, 1)
  path.write_text(f'{head}{begin}\n{table}\n{end}{tail}')


def build_parser() -> argparse.ArgumentParser:
  from experiments.scaling import programs

  assert sorted(RUN_ORDER) == sorted(programs.VARIANTS)
  parser = argparse.ArgumentParser(
      prog='python -m experiments.podscale',
    description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument('--out', default='experiments/results/podscale',
                      help='results folder')
  parser.add_argument('--rows', nargs='+', default=list(ROWS),
                      help='PRESET:data=D,fsdp=F,model=M (devices D*F*M)')
  parser.add_argument('--variants', nargs='+', default=list(RUN_ORDER),
                      choices=list(programs.VARIANTS), help='programs')
  parser.add_argument('--batch-size', type=cli_lib.positive_int, default=512,
                      help='global batch (rows; the paper: 512)')
  parser.add_argument('--seq-len', type=cli_lib.positive_int, default=256,
                      help='tokens per row (the paper: 256)')
  parser.add_argument('--recluster-interval', type=cli_lib.positive_int,
                      default=500, help="SGG's T")
  parser.add_argument('--n-layers', type=cli_lib.non_negative_int,
                      default=0, help="override of the presets' depth")
  parser.add_argument('--dim', type=cli_lib.non_negative_int, default=0,
                      help="override of the presets' width")
  parser.add_argument('--vocab-size', type=cli_lib.non_negative_int,
                      default=0, help="0: the preset's (32,000)")
  parser.add_argument('--timeout', type=cli_lib.positive_int, default=1800,
                      help='seconds per subprocess (recorded as a timeout)')
  parser.add_argument('--force', action='store_true',
                      help='measure recorded variants again')
  parser.add_argument('--fast-backend', action='store_true',
                      help='LLVM at -O0 (tests: same HLO, faster compile)')
  parser.add_argument('--from-runs', action='store_true',
                      help='only write the tables from the records')
  parser.add_argument('--docs', default=str(DOCS),
                      help="Markdown file with the table's markers ('' : "
                           'none)')
  parser.add_argument('--worker', nargs=2, metavar=('ROW', 'VARIANT'),
                      help=argparse.SUPPRESS)
  parser.add_argument('--json', help=argparse.SUPPRESS)
  return parser


def main(argv: Sequence[str] | None = None) -> None:
  args = build_parser().parse_args(argv)
  args.argv = ['python', '-m', 'experiments.podscale',
               *(sys.argv[1:] if argv is None else argv)]
  if args.worker:
    run_worker(args)
    return
  for row in args.rows:
    parse_row(row)
  out = pathlib.Path(args.out)
  if not args.from_runs:
    run_rows(args)
  docs = pathlib.Path(args.docs) if args.docs else None
  print(write_tables(out, docs))
