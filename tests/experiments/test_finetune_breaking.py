"""`experiments.finetuning.breaking`: where AdamW breaks in LoRA
fine-tuning, judged run by run, and claim 3 reading it."""

import json
import math

from experiments.finetuning import breaking
from experiments.report import robustness_claim, verdicts
from tests.experiments import claims_fixture


def _run(opt, lr, seed, losses, test=None):
  return {'task': 'lm', 'method': 'lora', 'optimizer': opt, 'lr': lr,
          'seed': seed, 'train_loss': losses,
          'test_loss': losses[-1] if test is None else test,
          'steps': len(losses), 'batch_size': 4, 'seq_len': 32,
          'sgg_interval': 5 if opt == 'adamw_sgg' else None,
          'sgg_beta3': 0.9 if opt == 'adamw_sgg' else None,
          'spec': {'opt': {'clip': 1.0}, 'warmup_frac': 0.1,
                   'lora': {'rank': 8}}}


def test_a_run_diverges_on_a_non_finite_or_a_final_loss_over_the_factor():
  calm = breaking.judge(_run('adamw', 0.01, 0, [5.0, 6.0, 4.0, 4.5]))
  assert not calm['diverged'] and calm['test_loss'] == 4.5
  assert calm['spike'] == 1.0   # 6 over the running minimum 5
  assert breaking.judge(_run('adamw', 0.1, 0, [5.0, math.nan, 4.0]))[
      'diverged']
  high = breaking.judge(_run('adamw', 0.1, 0, [5.0, 40.0, 7.6]))
  assert high['diverged'] and high['test_loss'] is None
  assert high['spike'] == 35.0
  # The test loss is fine but the last logged loss is not ...
  assert breaking.judge(_run('adamw', 0.1, 0, [5.0, 8.0], test=4.0))[
      'diverged']
  # ... and the other way round.
  assert breaking.judge(_run('adamw', 0.1, 0, [5.0, 4.0], test=8.0))[
      'diverged']
  assert not breaking.judge(_run('adamw', 0.1, 0, [5.0, 7.4]))['diverged']


def _grid(only_adamw_breaks: int):
  """LR 0.01 (nothing breaks) and 0.1, where AdamW alone breaks on the first
  ``only_adamw_breaks`` of 6 seeds."""
  runs = []
  for seed in range(6):
    runs.append(_run('adamw', 0.01, seed, [5.0, 4.0 + 0.1 * seed]))
    runs.append(_run('adamw_sgg', 0.01, seed, [5.0, 3.9 + 0.1 * seed]))
    runs.append(_run('adamw', 0.1, seed, [5.0, 9.0 if seed < only_adamw_breaks
                                          else 4.5]))
    runs.append(_run('adamw_sgg', 0.1, seed, [5.0, 4.4]))
  return breaking.summarise(runs)


def test_the_grid_pairs_seeds_and_marks_split_cells():
  result = _grid(2)
  assert result['optimizers'] == ['adamw', 'adamw_sgg']
  assert [c['lr'] for c in result['cells']] == [0.01, 0.1]
  assert [c['split'] for c in result['cells']] == [False, True]
  table = breaking.table(result)
  assert '| 0.1 | 2/6 div, spike 4.00, 4.500 | 0/6 div, spike 0.00, 4.400 |' \
      in table
  assert 'SGG T = 5, beta3 0.9' in breaking.title(result)


def test_claim_3_counts_the_fine_tuning_grid(tmp_path):
  claims_fixture.breaking(tmp_path, adam_breaks=False)
  folder = tmp_path / robustness_claim.FINETUNE_FOLDER
  folder.mkdir()
  (folder / breaking.FILE).write_text(json.dumps(_grid(6)))
  old = verdicts.Row('c', 'p', 't', ['r'], 'v', extra='the earlier grid')
  row = robustness_claim.breaking_row(tmp_path, old)
  # AdamW alone diverged on 6 of 12 paired seeds, SGG alone on none:
  # p = 2 / 2**6.
  assert row.verdict.startswith(
      "AdamW+SGG diverged less often than the base: the paper's direction")
  assert row.result[-1] == (
      'LoRA fine-tuning (`finetune_breaking`, SmolLM2-135M, LR 0.01–0.1): '
      'diverged runs AdamW 6/12, AdamW+SGG 0/12; AdamW+SGG: AdamW alone '
      'diverged on 6, SGG alone on 0 of 12 seeds (p = 0.031); SGG ended '
      'lower on 6 of 6 both finished')
  assert '| 0.1 | 6/6 div, spike 4.00 | 0/6 div, spike 0.00, 4.400 |' \
      in row.extra
