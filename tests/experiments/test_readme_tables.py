"""The README's tables and numbers are what the committed results give.

Fast: nothing trains. Each generated table of README.md sits between
``<!-- table:NAME:begin -->`` and ``<!-- table:NAME:end -->`` (each on its
own line, blank lines around the table) and must equal
what its generator prints from the committed run JSONs (``GENERATED``:
``python -m experiments.pretrain --out FOLDER --from-runs``, with the
folder's own command line from its ``COMMAND.txt``). Every other number in
the README's prose (outside code, links and generated tables) is either
checked against the committed JSONs here (``QUOTED``) or a name
(``NAMES``); a new unchecked number fails ``test_no_unchecked_number``.
Every relative link of the README points at a file of the repository (and,
with ``#anchor``, at one of its Markdown headings).
"""

import functools
import json
import pathlib
import re
from collections.abc import Callable

import pytest

from experiments.pretraining import compare
from experiments.report import claims, evidence, tables, verdicts

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = ROOT / 'README.md'
RESULTS = ROOT / 'experiments' / 'results'

# Generated table name -> the results folder its generator reads.
GENERATED = {'main_job': 'main_job_cpu'}

_BLOCK = re.compile(
    r'^<!-- table:(\w+):begin -->\n(.*?)\n<!-- table:(\w+):end -->$',
    re.M | re.S)


def _readme() -> str:
  return README.read_text()


def _blocks() -> dict[str, str]:
  blocks = {}
  for match in _BLOCK.finditer(_readme()):
    assert match.group(1) == match.group(3), match.group(0)[:80]
    assert match.group(1) not in blocks, match.group(1)
    blocks[match.group(1)] = match.group(2).strip('\n')
  return blocks


@functools.cache
def _generated(folder: str) -> tuple[str, dict]:
  return tables.compare_result(folder)


def test_every_marker_pair_is_closed_and_known():
  text = _readme()
  begins = re.findall(r'<!-- table:(\w+):begin -->', text)
  ends = re.findall(r'<!-- table:(\w+):end -->', text)
  assert begins == ends == list(_blocks())
  assert set(_blocks()) == set(GENERATED)


@pytest.mark.parametrize('name', sorted(GENERATED))
def test_generated_table_matches_the_run_jsons(name):
  expected, _ = _generated(GENERATED[name])
  command = (f'python -m experiments.pretrain --out experiments/results/'
             f'{GENERATED[name]} --from-runs')
  assert _blocks()[name] == expected, (
      f'README table {name!r} differs from the run JSONs; paste the output '
      f'of `{command}` between its markers')


def test_the_table_accounts_for_every_run_json():
  """The main job's tuning and reported runs are all its run JSONs."""
  _, result = _generated('main_job_cpu')
  runs = list((RESULTS / 'main_job_cpu' / 'runs').glob('*.json'))
  used = sum(len(arm['by_lr']) * len(next(iter(arm['by_lr'].values()))
                                     ['seeds'])
             for arm in result['sweep'].values())
  reported = sum(len(s['ppl']) for s in result['summary'].values())
  assert used + reported == len(runs)


def test_the_verdict_follows_the_runs():
  """'The update form and Adafactor+SGG were worse than their base on every
  seed (for Adafactor+SGG the 95% interval of the three seeds still
  includes 0 ...), and the momentum form is within the seed spread'."""
  _, result = _generated('main_job_cpu')
  summary = result['summary']
  for arm in ('adam_sgg_update', 'adafactor_sgg_update'):
    base = summary[compare.BASELINE_OF[arm]]['ppl']
    assert all(a > b for a, b in zip(summary[arm]['ppl'], base)), arm
  diffs = summary['adafactor_sgg_update']['paired_ppl_diff']['values']
  _, _, low, high = evidence.t_interval(diffs)
  assert low < 0 < high
  assert len(diffs) == len(_reported_seeds()) == 3
  diff = summary['adam_sgg_momentum']['paired_ppl_diff']
  assert abs(diff['mean']) < diff['std']
  signs = {v > 0 for v in diff['values']}
  assert signs == {True, False}  # better on some seeds, worse on others
  # The claims table's row 5 reads the C4 table's runs (the exact K-means),
  # where Adafactor+SGG's interval excludes 0, worse (its verdict is
  # generated).
  table = json.loads((RESULTS / 'c4_table' / 'c4_table.json').read_text())
  paired = next(r['paired'] for r in table['rows']
                if r['key'] == 'adafactor_sgg_update')
  _, _, low, high = evidence.t_interval(paired['diffs'])
  assert 0 < low < high
  row5 = next(line for line in claims.OUT.read_text().splitlines()
              if line.startswith('| **5.'))
  assert 'worse for Adafactor' in row5


# Numbers quoted in the README's prose, each with what the committed
# results say it should read.


def _main_runs() -> list[dict]:
  return [json.loads(p.read_text())
          for p in sorted((RESULTS / 'main_job_cpu' / 'runs').glob('*.json'))]


def _reported_seeds() -> list[int]:
  _, result = _generated('main_job_cpu')
  return result['report_seeds']


def _one(values) -> object:
  (value,) = set(values)
  return value


@functools.cache
def _bench_tree(tree: str) -> dict:
  """One tree of the committed CPU benchmark (bench_step/cpu)."""
  bench = json.loads((RESULTS / 'bench_step' / 'cpu' / 'results.json')
                     .read_text())
  (found,) = [t for t in bench['trees'] if t['tree'] == tree]
  return found


def _bench(tree: str, optimizer: str) -> float:
  """The median plain-step time ratio of ``optimizer`` to its base."""
  (row,) = [r for r in _bench_tree(tree)['rows']
            if r['optimizer'] == optimizer]
  return row['plain_ratio']


def _ratios(optimizer: str) -> str:
  """'a× / b×': the plain-step ratio on the matrix, then the LLaMA tree."""
  return (f'{_bench("matrix", optimizer):.2f}× / '
          f'{_bench("llama", optimizer):.2f}×')


CHAIN, MOMENTUM = 'adam+sgg (chain link)', 'adam+sgg (with_sgg, momentum)'
LOOP = ', loop decides'
H100_STEP = RESULTS / 'h100_60m' / 'train_step'


def _h100_step_ratios() -> list[float]:
  """Adam's tokens/s over each SGG form's, per preset and T (the only GPU
  step-time measurement, h100_60m/train_step)."""
  ratios = []
  for folder in ('plain', 'T5'):
    runs = {p.stem: json.loads(p.read_text())
            for p in (H100_STEP / folder).glob('*.json')}
    for name, run in runs.items():
      preset, _, opt = name.partition('-')
      if opt != 'adam':
        ratios.append(runs[f'{preset}-adam']['tokens_per_s']
                      / run['tokens_per_s'])
  return ratios


def _h100_commit() -> str:
  (commit,) = {json.loads(p.read_text())['provenance']['git_commit'][:7]
               for p in H100_STEP.rglob('*.json')}
  return commit


def _t_frac() -> str:
  (frac,) = {r['config']['recluster_interval'] / r['config']['steps']
             for r in _main_runs() if '_sgg' in r['config']['optimizer']}
  return f'{frac:.0%}'

QUOTED: dict[str, Callable[[], str]] = {
    # Set-up: the main job.
    '~0.6M-parameter': lambda: (
        f'~{_one(r["model"]["n_params"] for r in _main_runs()) / 1e6:.1f}'
        'M-parameter'),
    '3 seeds': lambda: f'{len(_reported_seeds())} seeds',
    '2-core CPU': lambda: (
        f'{_one(r["provenance"]["device"]["cpu_count"] for r in _main_runs())}'
        '-core CPU'),
    # Results.
    'seeds 0-2': lambda: (
        f'seeds {min(_reported_seeds())}-{max(_reported_seeds())}'),
    '100-step runs': lambda: (
        f'{_one(r["config"]["steps"] for r in _main_runs())}-step runs'),
    # Which form to use: bench_step/cpu, plain step against the base.
    '16M matrix / 93-leaf tree': lambda: (
        f'{_bench_tree("matrix")["params"] / 1e6:.0f}M matrix / '
        f'{_bench_tree("llama")["leaves"]}-leaf tree'),
    '1.03× / 1.03× Adam |': lambda: f'{_ratios(MOMENTUM)} Adam |',
    '1.81× / 1.96× Adam;': lambda: f'{_ratios(CHAIN)} Adam;',
    '**1.04× / 1.04× with `sgg_refresh`**': lambda: (
        f'**{_ratios(CHAIN + LOOP)} with `sgg_refresh`**'),
    '1.18× / 1.12× Adafactor;': lambda: (
        f'{_ratios("adafactor+sgg")} Adafactor;'),
    '1.04× / 1.02× with `sgg_refresh` |': lambda: (
        f'{_ratios("adafactor+sgg" + LOOP)} with `sgg_refresh` |'),
    # Quick start: the chain link's cost, and T in our experiments.
    "1.81× / 1.96× Adam's plain step": lambda: (
        f"{_ratios(CHAIN)} Adam's plain step"),
    '1.04× / 1.04× when the loop': lambda: (
        f'{_ratios(CHAIN + LOOP)} when the loop'),
    'do (5% of the run)': lambda: f'do ({_t_frac()} of the run)',
    # The GPU: one measurement, of earlier code.
    'earlier code 9b3d516': lambda: f'earlier code {_h100_commit()}',
    "at 1.7–2.3× Adam's": lambda: (
        f"at {min(_h100_step_ratios()):.1f}–{max(_h100_step_ratios()):.1f}× "
        "Adam's"),
    # The verdict (test_the_verdict_follows_the_runs): the claims row.
    'row 5 of the': lambda: f'row {_claim_row("claim_other_bases")} of the',
}


def _claim_row(name: str) -> int:
  return 1 + [c.__name__ for c in verdicts.CLAIMS].index(name)

# Digits that are names, not results.
NAMES = ('ACL 2025', 'arXiv:2506.01049', '1-D', 'Apache-2.0', 'SmolLM2',
         'H100', 'β3', '95% interval',
         # Definitions: SGG's factors start at 1; an interval holds 0.
         'factor is 1', 'exactly 1', 'includes 0')


@pytest.mark.parametrize('quote', sorted(QUOTED))
def test_quoted_number_matches_the_results(quote):
  assert _readme().count(quote) == 1, f'{quote!r} is not in README.md once'
  assert QUOTED[quote]() == quote


def _text(text: str) -> str:
  """README.md without generated tables, code blocks or comments."""
  text = _BLOCK.sub('', text)
  text = re.sub(r'^```.*?^```', '', text, flags=re.M | re.S)
  return re.sub(r'<!--.*?-->', '', text, flags=re.S)


def _prose(text: str) -> str:
  """`_text`, without the links' targets."""
  return re.sub(r'\]\([^)\s]*\)', ']', _text(text))


def test_no_unchecked_number():
  text = _readme()
  for quote in QUOTED:
    text = text.replace(quote, '')
  text = re.sub(r'`[^`\n]*`', '', _prose(text))  # then inline code
  for name in NAMES:
    text = text.replace(name, '')
  lines = [line for line in text.splitlines() if re.search(r'\d', line)]
  assert not lines, ('numbers in the README that no test checks (add them '
                     f'to QUOTED or to a generated table): {lines}')


def _links() -> list[str]:
  return re.findall(r'\]\(([^)\s]+)\)', _text(_readme()))


def _slug(heading: str) -> str:
  """GitHub's anchor of a Markdown heading."""
  heading = re.sub(r'[^\w\- ]', '', heading.strip().lower())
  return heading.replace(' ', '-')


def _anchors(path: pathlib.Path) -> set[str]:
  return {_slug(m) for m in re.findall(r'^#+ (.*)$', path.read_text(), re.M)}


def test_relative_links_point_at_files_in_the_repository():
  links = [x for x in _links() if not re.match(r'[a-z]+:', x)]
  assert links, 'no relative link found'
  for link in links:
    target, _, anchor = link.partition('#')
    path = (ROOT / target) if target else README
    assert path.is_file(), f'README links to {link}, which does not exist'
    assert path.resolve().is_relative_to(ROOT), link
    if anchor:
      assert path.suffix == '.md', f'{link}: anchors only into Markdown'
      assert anchor in _anchors(path), f'{link}: no such heading'


def test_the_docs_pages_it_links_are_on_the_site():
  """Each docs/ page the README links is in a toctree of the site."""
  docs = ROOT / 'docs'
  toctrees = ''.join(p.read_text() for p in docs.rglob('*.rst'))
  for link in _links():
    target = link.partition('#')[0]
    if target.startswith('docs/'):
      page = pathlib.Path(target).relative_to('docs').with_suffix('')
      if page.as_posix() == 'index':
        continue
      names = {page.as_posix()}
      if page.parent.name == 'howto':  # in docs/howto/index.rst's toctree
        names.add(page.name)
      assert any(re.search(rf'^   {re.escape(n)}$', toctrees, re.M)
                 for n in names), f'{target} is not in a toctree'
