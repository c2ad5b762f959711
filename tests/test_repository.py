"""What the repository tracks: no large file outside results and docs.

A wheel, a dataset or a checkpoint committed by accident stays in every
clone forever. Committed results (``experiments/results/``) and the
documentation's assets (``docs/``) may be large; nothing else may exceed
``LIMIT`` bytes.
"""

import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LIMIT = 1_000_000  # bytes
ALLOWED = ('experiments/results/', 'docs/')


def _tracked() -> list[str]:
  if shutil.which('git') is None or not (ROOT / '.git').exists():
    pytest.skip('not a git checkout')
  out = subprocess.run(['git', 'ls-files', '-z'], cwd=ROOT, check=True,
                       capture_output=True).stdout
  return [p for p in out.decode().split('\0') if p]


def large_files(paths: list[str], root: pathlib.Path = ROOT) -> list[str]:
  """``paths`` over ``LIMIT`` bytes outside ``ALLOWED``, with their size."""
  out = []
  for path in paths:
    file = root / path
    if path.startswith(ALLOWED) or not file.is_file():
      continue
    size = file.stat().st_size
    if size > LIMIT:
      out.append(f'{path} ({size / 1e6:.1f} MB)')
  return out


def test_no_tracked_file_over_the_limit():
  found = large_files(_tracked())
  assert not found, (f'tracked files over {LIMIT / 1e6:g} MB outside '
                     f'{", ".join(ALLOWED)}: {found}')


def test_the_check_finds_a_large_file(tmp_path):
  (tmp_path / 'docs').mkdir()
  for name in ('big.whl', 'docs/big.png', 'small.txt'):
    (tmp_path / name).write_bytes(b'x' * (LIMIT + 1 if 'big' in name else 10))
  assert large_files(['big.whl', 'docs/big.png', 'small.txt'],
                     tmp_path) == ['big.whl (1.0 MB)']
