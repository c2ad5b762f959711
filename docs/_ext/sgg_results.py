"""Brings the committed results into the docs at build time.

On every build, ``experiments/results/**`` (tables ``*.md``, plots ``*.png``
and each folder's ``COMMAND.txt``) is copied to ``docs/_generated/results``
and one Markdown fragment per results folder is written next to it
(``_generated/results/<folder>.fragment.md``: its command, its tables, its
plots, with paths relative to ``docs/``). The results pages, at the top of
``docs/``, include these files, so the site always shows what is
committed under ``experiments/results`` and nothing is copied by hand.
"""

import pathlib
import shutil

from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)

_KINDS = ('*.md', '*.png', 'COMMAND.txt')


def _title(name: str) -> str:
  return name.replace('_', ' ').replace('.md', '')


def _fragment(folder: pathlib.Path, rel: pathlib.Path) -> str:
  """Markdown showing one results folder: command, tables, plots."""
  here = f'_generated/results/{rel}'  # paths relative to docs/
  lines = []
  command = folder / 'COMMAND.txt'
  if command.exists():
    lines += [f'Command (`experiments/results/{rel}/COMMAND.txt`):', '',
              '````{literalinclude} ' + f'{here}/COMMAND.txt',
              ':language: text', '````', '']
  for table in sorted(folder.glob('*.md')):
    if table.name == 'README.md':
      continue
    lines += [f'**{_title(table.name)}** '
              f'(`experiments/results/{rel}/{table.name}`):', '',
              '```{include} ' + f'{here}/{table.name}',
              ':heading-offset: 2', '```', '']
  for plot in sorted(folder.glob('*.png')):
    lines += ['```{figure} ' + f'{here}/{plot.name}',
              f':alt: {_title(plot.stem)}', ':width: 100%', '',
              f'`experiments/results/{rel}/{plot.name}`', '```', '']
  return '\n'.join(lines)


def _copy_results(app: Sphinx) -> None:
  src = pathlib.Path(app.confdir).parent / 'experiments' / 'results'
  dst = pathlib.Path(app.confdir) / '_generated' / 'results'
  if not src.is_dir():
    logger.warning('no experiments/results folder at %s', src)
    return
  shutil.rmtree(dst, ignore_errors=True)
  dst.mkdir(parents=True)
  copied = 0
  for pattern in _KINDS:
    for path in src.rglob(pattern):
      if 'runs' in path.relative_to(src).parts:
        continue
      target = dst / path.relative_to(src)
      target.parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(path, target)
      copied += 1
  folders = sorted({p.parent for p in src.rglob('*')
                    if p.is_file() and p.suffix in ('.md', '.png')
                    and 'runs' not in p.relative_to(src).parts
                    and p.parent != src})
  for folder in folders:
    rel = folder.relative_to(src)
    name = str(rel).replace('/', '__')
    (dst / f'{name}.fragment.md').write_text(_fragment(folder, rel))
  logger.info('copied %d result files from %s', copied, src)


def setup(app: Sphinx) -> dict:
  app.connect('builder-inited', _copy_results)
  return {'parallel_read_safe': True, 'parallel_write_safe': True}
