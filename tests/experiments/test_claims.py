"""The committed claims table is what ``experiments.claims`` writes.

``experiments/results/claims.md`` and ``claims_details.md``, and the copy of
the table pasted into ``experiments/results/README.md`` between its claims
markers, must equal what the script makes from the committed run JSONs
(regenerate with ``python -m experiments.claims --readme``). Reads JSONs
only: no training.
"""

import math

import pytest

from experiments.report import claims, evidence, verdicts


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
