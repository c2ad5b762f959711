"""The README's quick start runs as written."""

import pathlib
import re

import numpy as np

from tests._rows import rows

README = pathlib.Path(__file__).resolve().parents[1] / 'README.md'


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
