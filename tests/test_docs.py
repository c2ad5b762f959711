"""The how-to scripts of the documentation run and print what the pages say.

Every ``docs/howto/snippets/*.py`` is shown on a page of ``docs/howto/``
with ``literalinclude``, followed by an ``Output:`` text block; each script runs
here, in this process, and its output must match that block (``...``
matches anything).
"""

import contextlib
import doctest
import io
import pathlib
import re
import runpy

import pytest

DOCS = pathlib.Path(__file__).resolve().parents[1] / 'docs'
HOWTO = DOCS / 'howto'
SNIPPETS = sorted((HOWTO / 'snippets').glob('*.py'))
_INCLUDE = re.compile(r'^\.\. literalinclude:: snippets/(\S+\.py)$', re.M)
_OUTPUT = re.compile(
    r'^Output[^\n]*:\n\n\.\. code-block:: text\n\n((?:(?:   [^\n]*)?\n)+)',
    re.M)


def _documented_outputs() -> dict[str, str | None]:
  """Snippet file name -> the Output block that follows its include."""
  outputs = {}
  for page in HOWTO.glob('*.rst'):
    text = page.read_text()
    for match in _INCLUDE.finditer(text):
      rest = text[match.end():]
      nxt = _INCLUDE.search(rest)
      out = _OUTPUT.search(rest[:nxt.start()] if nxt else rest)
      block = None
      if out:
        block = '\n'.join(line[3:] for line in out.group(1).splitlines())
      outputs[match.group(1)] = block
  return outputs


def test_every_snippet_is_shown_on_a_page():
  shown = _documented_outputs()
  assert sorted(shown) == [p.name for p in SNIPPETS]


# Only the NNX, Linen and LoRA scripts run in the fast set (tests/conftest.py,
# FAST); the others, and any new one, in the `slow` set.
@pytest.mark.parametrize('path', SNIPPETS, ids=lambda p: p.stem)
def test_snippet_runs_and_prints_the_documented_output(path):
  source = path.read_text()
  for module in ('flax', 'orbax'):
    if re.search(rf'^(import|from) {module}\b', source, re.M):
      pytest.importorskip(module)
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    runpy.run_path(str(path), run_name='__docs__')
  expected = _documented_outputs()[path.name]
  assert expected is not None, f'{path.name}: no Output: block on its page'
  checker = doctest.OutputChecker()
  flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
  assert checker.check_output(expected + '\n', out.getvalue(), flags), (
      f'{path.name} printed:\n{out.getvalue()}\nthe page says:\n{expected}')
