"""Sphinx math renderer: KaTeX from ``docs/_static/katex`` (works offline).

The HTML is Sphinx's own (``\\( ... \\)`` and ``\\[ ... \\]`` inside elements
of class ``math``, as for MathJax); the browser typesets it with the vendored
KaTeX, so building and viewing the site need no network.
"""

from sphinx.application import Sphinx
from sphinx.ext import mathjax

_JS = ('katex/katex.min.js', 'katex/auto-render.min.js', 'katex-render.js')


def _add_assets(app: Sphinx, pagename, templatename, context, doctree):
  del pagename, templatename, doctree
  if app.builder.format != 'html':
    return
  if not context.get('has_maths_elements', False):
    return
  app.builder.add_css_file('katex/katex.min.css')
  for js in _JS:
    app.builder.add_js_file(js)


def setup(app: Sphinx) -> dict:
  app.add_html_math_renderer(
      'katex_offline',
      (mathjax.html_visit_math, None),
      (mathjax.html_visit_displaymath, None))
  app.connect('html-page-context', _add_assets)
  return {'parallel_read_safe': True, 'parallel_write_safe': True}
