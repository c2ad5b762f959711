"""The wheel that the README's command builds carries what a user needs.

Builds the wheel from a copy of the sources (so the checkout gets no
``build/`` or ``*.egg-info``) with the command the README gives, and reads
it back: the license, the ``py.typed`` marker, the version, the SPDX
license and every public module.
"""

import pathlib
import re
import shutil
import subprocess
import sys
import zipfile

import sgg_optax

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMMAND = 'pip wheel --no-deps -w dist .'


def test_the_readme_wheel_command_builds_a_complete_wheel(tmp_path):
  assert f'\n{COMMAND}\n' in (ROOT / 'README.md').read_text()
  src = tmp_path / 'src'
  src.mkdir()
  for name in ('pyproject.toml', 'README.md', 'LICENSE'):
    shutil.copy(ROOT / name, src / name)
  shutil.copytree(ROOT / 'sgg_optax', src / 'sgg_optax',
                  ignore=shutil.ignore_patterns('__pycache__'))
  subprocess.run([sys.executable, '-m', *COMMAND.split()], cwd=src,
                 check=True, capture_output=True, timeout=300)
  (wheel,) = (src / 'dist').glob('sgg_optax-*.whl')
  assert wheel.name == f'sgg_optax-{sgg_optax.__version__}-py3-none-any.whl'
  with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
    info = f'sgg_optax-{sgg_optax.__version__}.dist-info'
    metadata = z.read(f'{info}/METADATA').decode()
    license_text = z.read(f'{info}/licenses/LICENSE').decode()
  assert 'Apache License' in license_text and 'Version 2.0' in license_text
  assert 'sgg_optax/py.typed' in names
  assert 'License-Expression: Apache-2.0' in metadata
  modules = {p.relative_to(ROOT).as_posix()
             for p in (ROOT / 'sgg_optax').rglob('*.py')}
  assert modules <= names, modules - names


def _lower_bounds() -> dict[str, str]:
  import tomllib
  project = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']
  return dict(dep.split('>=') for dep in project['dependencies'])


def test_minimum_versions_are_said_once_and_tested():
  """``pyproject.toml`` holds the minimum versions; the docs read them from
  it (``|requirements|``, docs/conf.py), and CI's min_versions step installs
  exactly those versions (``.ci/min-versions.txt``) and runs the core tests.
  """
  bounds = _lower_bounds()
  pins = dict(line.split('==') for line in
              (ROOT / '.ci' / 'min-versions.txt').read_text().splitlines()
              if line and not line.startswith('#'))
  for name, low in bounds.items():
    assert pins.get(name) in (low, low + '.0'), (name, low, pins)
  index = (ROOT / 'docs' / 'index.rst').read_text()
  assert '|requirements|' in index
  stale = re.findall(r'``(?:jax|optax|numpy)``\s*\(\s*[0-9.]+', index,
                     flags=re.IGNORECASE)
  assert not stale, stale
  sys.path.insert(0, str(ROOT / 'docs'))
  try:
    import conf  # docs/conf.py
  finally:
    sys.path.remove(str(ROOT / 'docs'))
  for name, low in bounds.items():
    shown = {'numpy': 'NumPy'}.get(name, name)
    assert f'``{shown}`` ({low} or later)' in conf.rst_epilog, name
