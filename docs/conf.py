"""Sphinx configuration of the sgg_optax documentation.

Build (warnings are errors), from the repository root:
  python -m sphinx -W -b html docs docs/_build/html
"""

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'docs' / '_ext'))

import sgg_optax  # noqa: E402

project = 'sgg_optax'
author = 'sgg_optax developers'
copyright = '2025-2026, sgg_optax developers'  # noqa: A001
release = sgg_optax.__version__
version = release


def requirements_line() -> str:
  """The core requirements, said once: read from ``pyproject.toml``."""
  import tomllib

  project_ = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']
  names = {'numpy': 'NumPy'}
  parts = []
  for dep in project_['dependencies']:
    name, _, low = dep.partition('>=')
    parts.append(f'``{names.get(name, name)}`` ({low} or later)')
  python = project_['requires-python'].removeprefix('>=')
  return f'{", ".join(parts[:-1])} and {parts[-1]}, on Python {python} or later'


rst_epilog = f'.. |requirements| replace:: {requirements_line()}\n'

extensions = [
    'sphinx.ext.autodoc',
    'sphinx.ext.autosummary',
    'sphinx.ext.napoleon',
    'sphinx.ext.viewcode',
    'myst_parser',
    'katex_offline',
    'sgg_results',
]

source_suffix = {'.rst': 'restructuredtext', '.md': 'markdown'}
root_doc = 'index'
exclude_patterns = ['_build', '_generated', 'howto/snippets',
                    '_static/katex/README.md']
templates_path = ['_templates']

# Maths: KaTeX vendored under _static/katex (see docs/_ext/katex_offline.py);
# nothing is fetched from the network when building or viewing the site.
html_math_renderer = 'katex_offline'

# API reference.
autosummary_generate = True
autodoc_typehints = 'description'
autodoc_typehints_description_target = 'documented_params'
autodoc_typehints_format = 'short'
autodoc_member_order = 'bysource'
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
add_module_names = False

myst_enable_extensions = ['dollarmath', 'colon_fence']
myst_heading_anchors = 3

html_theme = 'furo'
html_title = f'sgg_optax {release}'
html_static_path = ['_static']
html_css_files = ['custom.css']
html_show_sourcelink = False


def _skip_namedtuple_fields(app, what, name, obj, skip, options):
  """Hide NamedTuple field properties: the Attributes section covers them."""
  del app, what, name, options
  doc = getattr(obj, '__doc__', None) or ''
  if doc.startswith('Alias for field number'):
    return True
  return skip


def _short_schedule_type(app, what, name, obj, options, signature,
                         return_annotation):
  """Show ``optax.ScalarOrSchedule`` instead of its expanded union."""
  del what, obj, options, signature, return_annotation
  document = getattr(app.env, 'current_document', None)
  store = getattr(document, 'autodoc_annotations', None)
  if store is None:  # Sphinx < 9
    store = app.env.temp_data.get('annotations', {})
  annotations = store.get(name, {})
  for key, text in list(annotations.items()):
    if text.startswith('float |') and 'Callable[[' in text:
      short = 'optax.ScalarOrSchedule'
      annotations[key] = short + (' | None' if text.endswith('| None') else '')


def _check_api_complete(app, env):
  """Every name in ``sgg_optax.__all__`` appears in the API reference."""
  del env
  text = (pathlib.Path(app.srcdir) / 'api.rst').read_text()
  listed = {line.strip() for line in text.splitlines()
            if line.startswith('   ') and line.strip().isidentifier()}
  missing = sorted(set(sgg_optax.__all__) - listed)
  extra = sorted(listed - set(sgg_optax.__all__))
  if missing or extra:
    from sphinx.util import logging
    logging.getLogger(__name__).warning(
        'api.rst does not match sgg_optax.__all__: missing %s, not public %s',
        missing, extra)


def setup(app):
  app.connect('autodoc-skip-member', _skip_namedtuple_fields)
  # After autodoc has recorded the type hints (priority 500).
  app.connect('autodoc-process-signature', _short_schedule_type, priority=900)
  app.connect('env-updated', _check_api_complete)
