"""experiments/results/README.md: its tables are what the committed JSONs
give, and its statements follow the runs.

Fast: nothing trains. Each experiment table sits between
``<!-- table:NAME:begin -->`` and ``<!-- table:NAME:end -->`` and must equal
``experiments.report.tables.render(NAME)`` (pasted by
``python -m experiments.claims --readme``). The prose under the tables
states no number of its own; the statements it makes are checked here.
"""

import json
import pathlib
import re

import numpy as np
import pytest

from experiments.pretraining.config import canonical
from experiments.report import tables
from tests.experiments import claims_fixture

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = ROOT / 'experiments' / 'results' / 'README.md'
RESULTS = ROOT / 'experiments' / 'results'


def test_every_table_is_pasted_once():
  """Every block whose results are committed, once (a folder not yet run
  needs no markers)."""
  text = README.read_text()
  assert set(tables.blocks(text)) == tables.present()
  for name in tables.present():
    assert text.count(f'<!-- table:{name}:begin -->') == 1, name


@pytest.mark.parametrize('name', sorted(tables.present()))
def test_table_matches_the_jsons(name):
  assert tables.blocks(README.read_text())[name] == tables.render(name), (
      f'{name}: run `python -m experiments.claims --readme`')


def _summary(folder):
  return tables.compare_result(folder)[1]['summary']


def _diffs(summary, opt):
  return summary[opt]['paired_ppl_diff']['values']


def test_main_job_statements():
  s = _summary('main_job_cpu')
  # The update form and Adafactor+SGG are worse on every seed ...
  assert all(d > 0 for d in _diffs(s, 'adam_sgg_update'))
  assert all(d > 0 for d in _diffs(s, 'adafactor_sgg_update'))
  # ... the momentum form worse on two seeds and better on one.
  assert sorted(d > 0 for d in _diffs(s, 'adam_sgg_momentum')) == [
      False, True, True]
  # Every arm's best LR is Adam's; no scale at the clamp.
  assert {v['lr'] for v in s.values()} == {s['adam']['lr']}
  runs = [json.loads(p.read_text())
          for p in (RESULTS / 'main_job_cpu' / 'runs').glob('*.json')]
  assert all(r['clamped_fraction'] in (None, 0.0) for r in runs)
  # Adafactor beats Adam by far more than SGG changes either.
  gap = s['adam']['ppl_mean'] - s['adafactor']['ppl_mean']
  effects = [abs(s[o]['paired_ppl_diff']['mean'])
             for o in ('adam_sgg_update', 'adam_sgg_momentum',
                       'adafactor_sgg_update')]
  assert gap > 3 * max(effects)


def test_200_step_statements():
  s = _summary('cpu_tiny_200')
  assert {v['lr'] for v in s.values()} == {s['adam']['lr']}
  assert sorted(d > 0 for d in _diffs(s, 'adam_sgg_update')) == [
      False, True, True]
  assert all(d > 0 for d in _diffs(s, 'adam_sgg_momentum'))


def test_lora_statements():
  s = _summary('cpu_tiny_lora_pretrain')
  for opt in ('adam_sgg_update', 'adam_sgg_momentum'):
    assert s[opt]['ppl_mean'] < s['adam']['ppl_mean']
    assert {d > 0 for d in _diffs(s, opt)} == {True, False}, opt
  assert max(s, key=lambda o: s[o]['ppl_std']) == 'adam'


def test_robustness_statements():
  r = json.loads((RESULTS / 'cpu_tiny_robustness_ablations'
                  / 'robustness.json').read_text())
  assert not np.any(np.asarray([r['n_diverged'][o] for o in r['loss']]))
  # No cell favours SGG by more than Adam's seed sd of the test loss at
  # its tuned LR (the claims table's row 3).
  adam = _summary('main_job_cpu')['adam']['ppl']
  sd = float(np.std(np.log(adam), ddof=1))
  loss = {canonical(k): v for k, v in r['loss'].items()}
  for opt in ('adam_sgg_update', 'adam_sgg_momentum'):
    gap = np.asarray(loss[opt]) - np.asarray(loss['adam'])
    assert gap.min() > -sd, opt


def test_ablation_statements():
  a = json.loads((RESULTS / 'cpu_tiny_robustness_ablations'
                  / 'ablations.json').read_text())['variants']
  sgg = {k: v for k, v in a.items() if v.get('n_refreshes')}
  # No SGG variant beat Adam on average; the reference rule is the worst.
  assert all(v['paired_diff_vs_adam']['mean'] > 0 for v in sgg.values())
  worst = max(sgg, key=lambda k: sgg[k]['paired_diff_vs_adam']['mean'])
  assert 'reference' in worst
  # The paper's absolute T = 500 never refreshes: bitwise Adam.
  (paper,) = [v for k, v in a.items() if k.startswith('paper absolute')]
  assert paper['n_refreshes'] == 0
  assert paper['values'] == a['Adam (no SGG)']['values']
  # beta3 = 0.99 moves the scales far less than 0.9.
  (b99,) = [v for k, v in a.items() if k.startswith('beta3=0.99')]
  (default,) = [v for k, v in a.items() if k.startswith('default')]
  assert b99['final_max_abs_dev'] < default['final_max_abs_dev'] / 3
  # b2 = 0.999 is worse for Adam, and SGG does not close the gap.
  (adam999,) = [v for k, v in a.items() if k.startswith('Adam, b2=0.999')]
  (sgg999,) = [v for k, v in a.items()
               if re.match(r'Adam\+SGG \((chain|update)\), b2', k)]
  assert adam999['paired_diff_vs_adam']['mean'] > 0
  assert (sgg999['paired_diff_vs_adam']['mean']
          > adam999['paired_diff_vs_adam']['mean'])


def _text() -> str:
  """The README as one line (block quotes unquoted)."""
  return ' '.join(re.sub(r'^> ?', '', README.read_text(), flags=re.M)
                  .split())


def test_the_fine_tuning_status_names_what_the_folders_hold():
  """The status block says which fine-tuning arms each folder holds."""
  arms = {}
  for folder in ('finetune', 'finetune_cls'):
    arms[folder] = {(r['task'], r['method']) for r in (
        json.loads(p.read_text())
        for p in (RESULTS / folder / 'runs').glob('*.json'))
        if r.get('optimizer')}
  assert arms['finetune'] == {('lm', 'full'), ('lm', 'lora'),
                              ('lm', 'qlora'), ('cls', 'lora')}
  assert arms['finetune_cls'] == {('cls', 'full'), ('cls', 'qlora')}
  text = _text()
  assert ('`finetune/` (lm full, LoRA and Q-LoRA, cls LoRA) was run at '
          + _commit('finetune')) in text
  assert ('`finetune_cls/` holds the two arms it left out, cls full '
          'fine-tuning and cls Q-LoRA, run to the same protocol with the '
          f'code of {_commit("finetune_cls")}') in text
  assert 'withdrawn' not in text


def _commit(folder: str) -> str:
  (commit,) = {json.loads(p.read_text())['provenance']['git_commit'][:7]
               for p in (RESULTS / folder / 'runs').glob('*.json')}
  return commit


def test_the_set_up_paragraph_is_the_runs_set_up():
  """'Set-up common to all' and the tables under it agree: betas, grid,
  tuning seed and split, SGG's K, T and beta3."""
  text = _text()
  for folder in ('main_job_cpu', 'cpu_tiny_200', 'cpu_tiny_lora_pretrain'):
    _, result = tables.compare_result(folder)
    base = result['base_config']
    assert (base['b1'], base['b2'], base['eps']) == (0.9, 0.95, 1e-8)
    assert (base['clip_norm'], base['weight_decay']) == (1.0, 0.0)
    assert result['tune_seeds'] == [100] and result['tune'] == 'seed'
    assert result['selection'] == 'mean dev loss of the tuning runs'
    assert result['t_frac'] == 0.05
    for s in result['summary'].values():
      if s['recluster_interval'] is not None:
        assert s['beta3'] == 0.9
        assert s['recluster_interval'] == round(0.05 * base['steps'])
  assert 'Adam-family arms use betas (0.9, 0.95)' in text
  assert 'T = 5% of the run' in text and 'beta3 = 0.9, chosen' in text
  assert 'eps 1e-8' in text and 'clipping at 1.0' in text
  assert "(0.9, 0.999) in the tables below" not in text
  # The previous method is named as such, with its own grid.
  assert ('(`h100_small_compare/`) used Adam b2 = 0.999, the paper\'s grid '
          '{1e-2, 5e-3, 1e-3, 5e-4}') in text


def test_max_dev_is_the_mean_of_the_seeds_in_both_tables():
  """The main job's 'max |S-1| at end' and the ablation table's default
  row (the same runs) give the same number."""
  s = _summary('main_job_cpu')['adam_sgg_update']
  a = json.loads((RESULTS / 'cpu_tiny_robustness_ablations'
                  / 'ablations.json').read_text())['variants']
  (default,) = [v for k, v in a.items() if k.startswith('default')]
  assert s['final_max_abs_dev'] == pytest.approx(
      default['final_max_abs_dev'], abs=5e-5)
  assert 'max \\|S-1\\| at end, mean of seeds' in README.read_text()


def test_each_table_heading_names_its_experiment():
  text = README.read_text()
  blocks = tables.blocks(text)
  for name, (_, kind) in tables.BLOCKS.items():
    if kind != 'compare':
      continue
    title = blocks[name].strip().splitlines()[0]
    section = text[:text.index(f'<!-- table:{name}:begin -->')]
    heading = section[section.rindex('\n## '):].splitlines()[1]
    assert title.split(':')[0] == heading.split(':')[0].lstrip('# '), (
        name, title, heading)


def test_the_c4_and_breaking_tables_from_their_jsons(tmp_path):
  """The blocks of the C4 table and the breaking grid: heading and table
  from the folder's JSON, pasted once its JSON is there."""
  assert tables.present(tmp_path) == set()
  claims_fixture.c4_table(tmp_path)
  claims_fixture.breaking(tmp_path)
  assert tables.present(tmp_path) == {'c4_table', 'breaking'}
  c4 = tables.render('c4_table', tmp_path)
  assert c4.startswith("The paper's C4 table at our scale (tiny LLaMA, "
                       'bbc_news, seq 128, batch 16, 100 steps;')
  assert '| *Pre-training with full-rank optimizers* |' in c4
  # LAMB+SGG's paired column: -10, -11, -9 (t = 4.303, n = 3).
  assert '| lamb_sgg_momentum | 0.003 | 100.00 ± 10.54 | -10.00 [-12.48, '\
      '-7.52] | — (LLaVA table only) |' in c4
  assert '| apollo | | unavailable: apollo needs sgg_optax.apollo |' in c4
  grid = tables.render('breaking', tmp_path)
  assert grid.startswith('Where Adam breaks: 100 steps per cell, gradient '
                         'clipping off, warm-up 0%, tuned Adam LR 0.001;')
  assert '| 16 | 0.1 (100x) | 3/3 div | 0/3 div, spike 0.10, 4.990 |' in grid
  readme = ''.join(f'<!-- table:{n}:begin -->\nold\n<!-- table:{n}:end -->\n'
                   for n in ('c4_table', 'breaking'))
  pasted = tables.blocks(tables.paste(readme, tmp_path))
  assert pasted == {'c4_table': c4, 'breaking': grid}
  with pytest.raises(ValueError, match="no markers for \\['breaking'\\]"):
    tables.paste(readme.split('<!-- table:breaking')[0], tmp_path)
