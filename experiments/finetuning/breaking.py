"""Where AdamW breaks in LoRA fine-tuning, and whether SGG does too.

Reads the run JSONs of a fine-tuning sweep run over a grid of learning rates
(``python -m experiments.finetune --lrs-lora ...``; every grid point of the
tuning seed, and the seeds added at the rates worth repeating) and writes,
per learning rate and optimizer, each seed's divergence, largest loss spike
and final test loss: ``finetune_breaking.json`` and ``finetune_breaking.md``
in the folder. A run diverged when a training loss is not finite, or its
last logged training loss, or its test loss, is over ``FACTOR`` times its
first training loss (the pre-training grid's rule). The claims page reads
the JSON (claim 3).

Example::

  python -m experiments.finetuning.breaking \
      experiments/results/finetune_breaking
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
from collections.abc import Sequence
from typing import Any

FACTOR = 1.5
FILE = 'finetune_breaking.json'
LABELS = {'adamw': 'AdamW', 'adamw_sgg': 'AdamW+SGG'}


def judge(run: dict[str, Any]) -> dict[str, Any]:
  """One run's seed, divergence, largest spike and final test loss."""
  losses = [float(x) for x in run['train_loss']]
  finite = [x for x in losses if math.isfinite(x)]
  limit = FACTOR * losses[0]
  test = run.get('test_loss')
  test = None if test is None or not math.isfinite(test) else float(test)
  diverged = (len(finite) < len(losses) or losses[-1] > limit
              or test is None or test > limit)
  low, spike = math.inf, 0.0
  for x in finite:
    low = min(low, x)
    spike = max(spike, x - low)
  return {'seed': run['seed'], 'diverged': diverged, 'spike': spike,
          'test_loss': None if diverged else test,
          'first_loss': losses[0], 'last_loss': losses[-1]}


def summarise(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """The grid: for every learning rate, each optimizer's judged seeds."""
  lm = [r for r in runs if r.get('task') == 'lm' and 'train_loss' in r]
  if not lm:
    raise ValueError('no lm fine-tuning run JSONs')
  methods = sorted({r['method'] for r in lm})
  if len(methods) != 1:
    raise ValueError(f'one method per grid, got {methods}')
  opts = [o for o in LABELS if any(r['optimizer'] == o for r in lm)]
  cells = []
  for lr in sorted({r['lr'] for r in lm}):
    cell = {'lr': lr, 'runs': {}}
    for opt in opts:
      seeds = sorted((r for r in lm if r['lr'] == lr
                      and r['optimizer'] == opt), key=lambda r: r['seed'])
      cell['runs'][opt] = [judge(r) for r in seeds]
    div = {o: {j['seed'] for j in js if j['diverged']}
           for o, js in cell['runs'].items()}
    ran = {o: {j['seed'] for j in js} for o, js in cell['runs'].items()}
    cell['split'] = any((div[a] ^ div[b]) & ran[a] & ran[b]
                        for a in opts for b in opts if a < b)
    cells.append(cell)
  first = lm[0]
  sgg = next((r for r in lm if r['optimizer'] == 'adamw_sgg'), None)
  return {
      'method': methods[0], 'optimizers': opts, 'cells': cells,
      'steps': first['steps'], 'batch_size': first['batch_size'],
      'seq_len': first['seq_len'], 'clip': first['spec']['opt']['clip'],
      'warmup_frac': first['spec']['warmup_frac'],
      'lora_rank': first['spec']['lora']['rank'],
      'sgg_interval': sgg and sgg['sgg_interval'],
      'sgg_beta3': sgg and sgg['sgg_beta3'], 'factor': FACTOR}


def title(result: dict[str, Any]) -> str:
  return (f'Where AdamW breaks, SmolLM2-135M {result["method"]} fine-tuning '
          f'(rank {result["lora_rank"]}): {result["steps"]} steps of '
          f'{result["batch_size"]} x {result["seq_len"]} tokens, clipping '
          f'{result["clip"]:g}, warm-up {result["warmup_frac"]:.0%}; SGG T = '
          f'{result["sgg_interval"]}, beta3 {result["sgg_beta3"]:g}; per '
          'cell: diverged seeds / seeds (a non-finite loss, or a final or '
          f'test loss over {result["factor"]:g}x the first), the largest '
          'spike (nats over the running minimum), the mean test loss of the '
          'seeds that finished')


def table(result: dict[str, Any]) -> str:
  opts = result['optimizers']
  lines = ['| LR | ' + ' | '.join(LABELS[o] for o in opts) + ' |',
           '|---|' + '---|' * len(opts)]
  for cell in result['cells']:
    row = []
    for opt in opts:
      js = cell['runs'][opt]
      if not js:
        row.append('—')
        continue
      done = [j['test_loss'] for j in js if not j['diverged']]
      text = (f'{sum(j["diverged"] for j in js)}/{len(js)} div, spike '
              f'{max(j["spike"] for j in js):.2f}')
      if done:
        text += f', {sum(done) / len(done):.3f}'
      row.append(text)
    lines.append(f'| {cell["lr"]:g} | ' + ' | '.join(row) + ' |')
  return '\n'.join(lines) + '\n'


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      prog='python -m experiments.finetuning.breaking',
      description=__doc__.split('\n\n')[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument('folder', type=pathlib.Path,
                      help='a fine-tuning results folder (its runs/*.json)')
  args = parser.parse_args(argv)
  runs = [json.loads(p.read_text())
          for p in sorted((args.folder / 'runs').glob('*.json'))]
  result = summarise(runs)
  (args.folder / FILE).write_text(json.dumps(result, indent=1) + '\n')
  (args.folder / 'finetune_breaking.md').write_text(
      f'{title(result)}\n\n{table(result)}')
  print(f'{title(result)}\n\n{table(result)}')


if __name__ == '__main__':
  main()
