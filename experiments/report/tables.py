"""The results README's experiment tables, generated from the committed JSONs.

Each table of ``experiments/results/README.md`` sits between
``<!-- table:NAME:begin -->`` and ``<!-- table:NAME:end -->`` and is what
:func:`render` gives for ``NAME`` (:data:`BLOCKS`):

* ``compare`` tables: experiment 1's table rebuilt from the folder's run
  JSONs (``python -m experiments.pretrain --out FOLDER --from-runs``, with
  the folder's own command line from its ``COMMAND.txt``), then every
  arm's test PPL seed by seed and its paired difference to its base;
* ``robustness`` and ``ablations``: experiments 3 and 4's tables from the
  folder's ``robustness.json`` and ``ablations.json``, which the command
  wrote from its runs;
* ``c4_table`` and ``breaking``: the paper's C4 table at our scale and the
  grid of where Adam breaks, with their headings, from the folder's
  ``c4_table.json`` and ``breaking.json``; ``finetune_breaking``, where
  AdamW breaks in LoRA fine-tuning, from ``finetune_breaking.json``. A
  block whose folder has no such file yet (`present`) needs no markers.

``python -m experiments.claims --readme`` pastes them (with the claims
table); ``tests/experiments/test_results_readme.py`` fails when a pasted
table differs from what the JSONs give.
"""

from __future__ import annotations

import json
import pathlib
import re
import shlex
from typing import Any

from experiments.finetuning import breaking as ft_breaking
from experiments.pretraining.ablations import ablation_table
from experiments.pretraining.c4_table import c4_markdown, c4_title
from experiments.pretraining.config import LABELS
from experiments.pretraining.pretrain_cli import stored_compare
from experiments.pretraining.robustness import (
  breaking_table,
  breaking_title,
  robustness_table,
)

RESULTS = pathlib.Path(__file__).resolve().parents[1] / 'results'

# Block name -> (results folder, what the block shows).
BLOCKS: dict[str, tuple[str, str]] = {
    'main_job_cpu': ('main_job_cpu', 'compare'),
    'cpu_tiny_200': ('cpu_tiny_200', 'compare'),
    'cpu_tiny_lora_pretrain': ('cpu_tiny_lora_pretrain', 'compare'),
    'robustness': ('cpu_tiny_robustness_ablations', 'robustness'),
    'ablations': ('cpu_tiny_robustness_ablations', 'ablations'),
    'c4_table': ('c4_table', 'c4_table'),
    'breaking': ('breaking', 'breaking'),
    'finetune_breaking': ('finetune_breaking', 'finetune_breaking'),
}
# The tables drawn from one JSON file of their folder: (heading, table).
_FROM_JSON = {
    'robustness': (None, robustness_table),
    'ablations': (None, ablation_table),
    'c4_table': (c4_title, c4_markdown),
    'breaking': (breaking_title, breaking_table),
    'finetune_breaking': (ft_breaking.title, ft_breaking.table),
}

_BLOCK = re.compile(
    r'(<!-- table:(\w+):begin -->\n).*?(\n<!-- table:\2:end -->)', re.S)


def folder_command(folder: str) -> list[str]:
  """The arguments of the folder's first ``python -m experiments.pretrain``
  line (its ``COMMAND.txt``)."""
  for line in (RESULTS / folder / 'COMMAND.txt').read_text().splitlines():
    if line.startswith('python -m experiments.pretrain'):
      return shlex.split(line)[3:]
  raise ValueError(f'{folder}/COMMAND.txt has no pretrain command')


def compare_result(folder: str) -> tuple[str, dict[str, Any]]:
  """Experiment 1's heading and table, and its result, from the run JSONs."""
  return stored_compare(folder_command(folder)
                        + ['--out', str(RESULTS / folder)])


def seeds_table(result: dict[str, Any]) -> str:
  """Every arm's test PPL seed by seed, and its paired difference."""
  seeds = result['report_seeds']
  lines = [f'| optimizer | test PPL, seeds {" / ".join(map(str, seeds))} '
           '| SGG − base, seed by seed |', '|---|---|---|']
  for opt, s in result['summary'].items():
    diff = s.get('paired_ppl_diff') or {}
    lines.append(
        f'| {LABELS.get(opt, opt)} | '
        f'{" / ".join(f"{p:.1f}" for p in s["ppl"])} | '
        f'{", ".join(f"{d:+.1f}" for d in diff.get("values", []))} |')
  return '\n'.join(lines)


def present(results: pathlib.Path = RESULTS) -> set[str]:
  """The blocks whose results exist: a compare block's folder, or the
  JSON file the others are drawn from."""
  return {name for name, (folder, kind) in BLOCKS.items()
          if (results / folder / ('' if kind == 'compare' else
                                  f'{kind}.json')).exists()}


def render(name: str, results: pathlib.Path = RESULTS) -> str:
  """The Markdown of block ``name``."""
  folder, kind = BLOCKS[name]
  if kind == 'compare':
    table, result = compare_result(folder)
    return f'{table}\n\n{seeds_table(result)}'
  result = json.loads((results / folder / f'{kind}.json').read_text())
  title, table = _FROM_JSON[kind]
  text = table(result).rstrip('\n')
  return f'{title(result)}\n\n{text}' if title else text


def blocks(readme: str) -> dict[str, str]:
  """The README's pasted blocks, by name."""
  return {m.group(2): readme[m.end(1):m.start(3)]
          for m in _BLOCK.finditer(readme)}


def paste(readme: str, results: pathlib.Path = RESULTS) -> str:
  """``readme`` with every block rendered afresh."""
  missing = present(results) - set(blocks(readme))
  if missing:
    raise ValueError(f'the README has no markers for {sorted(missing)}')
  return _BLOCK.sub(lambda m: m.group(1) + render(m.group(2), results)
                    + m.group(3), readme)
