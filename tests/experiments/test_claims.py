"""The committed claims table is what ``experiments.claims`` writes.

``experiments/results/claims.md`` and ``claims_details.md``, and the copy of
the table pasted into ``experiments/results/README.md`` between its claims
markers, must equal what the script makes from the committed run JSONs
(regenerate with ``python -m experiments.claims --readme``). Reads JSONs
only: no training.
"""

import json
import math

import numpy as np
import pytest

from experiments.report import (
  claims,
  evidence,
  robustness_claim,
  table_claims,
  verdicts,
)
from tests.experiments import claims_fixture


@pytest.fixture(scope='module')
def rendered() -> tuple[str, str]:
  return claims.render()


def test_committed_claims_table_is_generated(rendered):
  assert claims.OUT.read_text() == rendered[0], (
      'experiments/results/claims.md is stale: run '
      '`python -m experiments.claims --readme`')


def test_committed_details_are_generated(rendered):
  assert claims.DETAILS.read_text() == rendered[1], (
      'experiments/results/claims_details.md is stale: run '
      '`python -m experiments.claims --readme`')


def test_readme_carries_the_generated_table(rendered):
  readme = claims.README.read_text()
  assert readme.count(claims.BEGIN) == readme.count(claims.END) == 1
  assert claims.pasted(readme) == rendered[0], (
      'the table in experiments/results/README.md differs from the '
      'generated one: run `python -m experiments.claims --readme`')


def test_one_row_per_claim(rendered):
  header, *lines = rendered[0].splitlines()
  rows = [line for line in lines if line.startswith('| **')]
  assert len(rows) == len(verdicts.CLAIMS) == 6
  for row in rows:   # as many cells as the header: no stray |
    assert row.count(' | ') == header.count(' | '), row


def test_t_interval_by_hand():
  mean, sd, lo, hi = evidence.t_interval([1.0, 2.0, 3.0])
  half = 4.303 / math.sqrt(3)
  assert (mean, sd) == (2.0, 1.0)
  assert lo == pytest.approx(2 - half) and hi == pytest.approx(2 + half)
  with pytest.raises(ValueError):
    evidence.t_interval([1.0])


def test_t_quantiles_match_scipy():
  stats = pytest.importorskip('scipy.stats')
  for df, t in evidence.T975.items():
    assert t == pytest.approx(stats.t.ppf(0.975, df), abs=6e-4), df


def test_paste_round_trip():
  readme = f'# x\n\nlead\n\n{claims.BEGIN}\nold\n{claims.END}\n\n## more\n'
  new = claims.paste(readme, 'table\n')
  assert claims.pasted(new) == 'table\n'
  assert new.endswith(f'{claims.END}\n\n## more\n')
  with pytest.raises(ValueError):
    claims.paste('no markers', 'table\n')


def test_cli_writes_both_files(tmp_path, rendered, capsys):
  out, details = tmp_path / 'c.md', tmp_path / 'd.md'
  claims.main(['--out', str(out), '--details', str(details)])
  assert out.read_text() == rendered[0]
  assert details.read_text() == rendered[1]
  with pytest.raises(SystemExit) as exit_:
    claims.main(['--help'])
  assert exit_.value.code == 0
  assert '--out' in capsys.readouterr().out


# --- The new folders: c4_table/ (claims 2 and 5) and breaking/ (claim 3) ---
# Each claim reads them when they are there and keeps its earlier evidence
# when they are not. The folders here are synthetic (claims_fixture.py),
# beside links to the committed ones.

NEW = ('c4_table', 'breaking', 'finetune_breaking')


def _linked(root):
  """``root`` with a link to every committed results folder but the new."""
  root.mkdir(parents=True, exist_ok=True)
  for folder in claims.RESULTS.iterdir():
    if folder.is_dir() and folder.name not in NEW:
      (root / folder.name).symlink_to(folder)
  return root


@pytest.fixture(scope='module')
def earlier(tmp_path_factory):
  return _linked(tmp_path_factory.mktemp('earlier'))


@pytest.fixture(scope='module')
def new(tmp_path_factory):
  root = _linked(tmp_path_factory.mktemp('new'))
  claims_fixture.c4_table(root)
  claims_fixture.breaking(root)
  return root


def test_without_the_new_folders_the_claims_keep_their_evidence(earlier):
  lora = verdicts.claim_lora_pretrain(earlier)
  assert lora.test.startswith('`cpu_tiny_lora_pretrain`')
  assert lora.verdict.startswith('**inconclusive**')
  robust = verdicts.claim_robustness(earlier)
  assert robust.test.startswith('`cpu_tiny_robustness_ablations`')
  assert robust.verdict.startswith('**untested** as claimed')
  bases = verdicts.claim_other_bases(earlier)
  assert bases.verdict.endswith('; LAMB, CAME, APOLLO untested')
  assert [p.folder for p in bases.pairs] == ['main_job_cpu']


def test_other_bases_from_the_c4_table(new):
  row = verdicts.claim_other_bases(new)
  assert row.verdict == (
      "SGG better in 1 of 3: the paper's direction; SGG better for LAMB; "
      'worse for CAME; tied for Adafactor; APOLLO not run')
  assert 'untested' not in row.verdict
  assert row.test.startswith('`c4_table`: ') and row.test.endswith(
      '3 seeds; LAMB, CAME, Adafactor')
  assert row.result[0] == f'LAMB: −10.0 [−12.5,{evidence.NBSP}−7.5] PPL'
  assert row.result[-1] == 'APOLLO: not run'
  lamb = row.pairs[0]
  assert (lamb.folder, lamb.label) == ('c4_table', 'LAMB+SGG − LAMB')
  assert lamb.diffs == (-10.0, -11.0, -9.0)
  # The main job's Adafactor pair stays in the details.
  assert [p.folder for p in row.pairs][-1] == 'main_job_cpu'
  assert 'APOLLO: apollo_sgg_update unavailable' in row.extra


def test_lora_against_relora_and_galore(new):
  row = verdicts.claim_lora_pretrain(new)
  assert row.verdict == (
      'LoRA+SGG closer to full rank than LoRA, ReLoRA, GaLore: the paper\'s '
      'direction; worse than full rank')
  assert 'the momentum form (its lower dev loss' in row.test
  labels = [p.label for p in row.pairs if p.folder == 'c4_table']
  assert labels[:4] == ['LoRA − full rank', 'ReLoRA − full rank',
                        'GaLore − full rank',
                        'LoRA+SGG (momentum) − full rank']
  by_label = {p.label: p for p in row.pairs if p.folder == 'c4_table'}
  # LoRA+SGG − ReLoRA is the difference of the two gaps to full rank.
  gap = (np.asarray(by_label['LoRA+SGG (momentum) − full rank'].diffs)
         - by_label['ReLoRA − full rank'].diffs)
  np.testing.assert_allclose(
      by_label['LoRA+SGG (momentum, dev choice) − ReLoRA'].diffs, gap)
  assert row.result[-1] == ('gap to full rank: LoRA +10.3, ReLoRA +30.0, '
                            'GaLore +15.0 PPL')
  # The earlier LoRA runs stay in the details.
  assert any(p.folder == 'cpu_tiny_lora_pretrain' for p in row.pairs)


def test_a_diverged_seed_is_left_out_of_its_pair(tmp_path):
  claims_fixture.c4_table(tmp_path, ppl={'galore': (115.0, 126.0, None),
                                         'relora': (130.0, None, None)})
  table = table_claims.C4Table.load(tmp_path)
  p = table.pair(2, 'galore', 'adam', 'GaLore − full rank')
  assert p.label == 'GaLore − full rank (1 seed diverged)'
  assert p.diffs == (15.0, 16.0)
  assert table.pair(2, 'relora', 'adam', 'x') == (
      '1 of 3 seeds finished on both')


def test_the_table_must_agree_with_its_runs(tmp_path):
  folder = claims_fixture.c4_table(tmp_path)
  path = folder / 'runs' / 'lamb_s1.json'
  run = json.loads(path.read_text())
  path.write_text(json.dumps({**run, 'test_ppl': 1.0}))
  table = table_claims.C4Table.load(tmp_path)
  assert len(table.runs('lamb_sgg_momentum')) == 3
  with pytest.raises(ValueError, match='rerun the table'):
    table.runs('lamb')


def test_breaking_where_adam_diverges_alone(new):
  row = verdicts.claim_robustness(new)
  assert row.verdict.startswith(
      "Adam+SGG (update) diverged less often than the base: the paper's "
      'direction (sign test')
  assert row.result[0] == (
      'diverged runs: Adam 6/10, Adam+SGG (update) 0/10, LAMB 0/10, '
      'LAMB+SGG (momentum) 1/10')
  assert row.result[1] == (
      'Adam+SGG (update): Adam alone diverged on 6, SGG alone on 0 of 10 '
      'seeds (p = 0.031); SGG ended lower on 4 of 4 both finished')
  assert row.result[-1] == '2 split cells, 3+ seeds each'
  # The new grid and the earlier one, in the details.
  assert '| 4 | 0.1 (100x) | 3/3 div |' in row.extra
  assert '`cpu_tiny_robustness_ablations`' in row.extra
  assert [s.folder for s in row.scales] == [
      'breaking', 'cpu_tiny_robustness_ablations']


def test_breaking_where_adam_never_diverges(tmp_path):
  claims_fixture.breaking(tmp_path, adam_breaks=False)
  old = verdicts.Row('c', 'p', 't', ['r'], 'v', extra='the earlier grid')
  row = robustness_claim.breaking_row(tmp_path, old)
  assert row.verdict == (
      '**no instability to fix at this scale**: Adam never diverged, pushed '
      'to 100x the tuned LR 0.001 (0.1) at batch 4 and 16, clipping off, '
      'warm-up 0%, 100 steps per cell')
  assert row.extra.endswith('the earlier grid')


def test_breaking_with_too_few_seeds_in_a_split_cell(tmp_path):
  claims_fixture.breaking(tmp_path, split_seeds=2)
  old = verdicts.Row('c', 'p', 't', ['r'], 'v')
  row = robustness_claim.breaking_row(tmp_path, old)
  assert row.verdict.startswith('**tie within noise**')   # 4 seeds, p 0.125
  assert row.verdict.endswith(
      '; a split cell has only 2 seeds (fewer than 3)')


def test_sign_test_by_hand():
  assert robustness_claim.sign_test(6, 6) == 2 / 2 ** 6
  assert robustness_claim.sign_test(0, 5) == 2 / 2 ** 5
  assert robustness_claim.sign_test(1, 4) == 2 * 5 / 16
  assert robustness_claim.sign_test(3, 6) == 1.0
  assert robustness_claim.sign_test(0, 0) == 1.0
  stats = pytest.importorskip('scipy.stats')
  for k, n in ((0, 7), (2, 9), (5, 8)):
    assert robustness_claim.sign_test(k, n) == pytest.approx(
        stats.binomtest(k, n).pvalue)


def test_render_reads_the_new_folders(new):
  table, details = claims.render(new)
  rows = [line for line in table.splitlines() if line.startswith('| **')]
  assert len(rows) == 6
  assert 'LAMB, CAME, APOLLO untested' not in rows[4]
  assert 'Claim 3, where Adam breaks (`breaking`' in details
  assert '| 5 | `c4_table` | LAMB+SGG − LAMB | −10.0 / −11.0 / −9.0 |' in (
      details)


def test_finetune_counts_the_finetune_cls_pairs():
  row = verdicts.claim_finetune(claims.RESULTS)
  arms = {(p.folder, p.label): p.outcome for p in row.pairs}
  assert arms[('finetune_cls', 'cls Q-LoRA')] == 'tie'
  assert arms[('finetune_cls', 'cls full fine-tuning')] == 'tie'
  assert row.verdict.startswith('**tie within noise** (tied in 4 of 4)')
  assert row.result[-1].startswith('cls Q-LoRA: ')
  commits = {json.loads(p.read_text())['provenance']['git_commit'][:7]
             for p in (claims.RESULTS / 'finetune_cls' / 'runs').glob('*')}
  (commit,) = commits
  assert (f'`finetune_cls`: the arms it left out, cls Q-LoRA and cls full '
          f'fine-tuning, to the same protocol with the code of {commit}'
          ) in row.test
