"""Checks in headless Chromium that built pages have their maths typeset.

Usage (after building the site):
  python docs/check_math.py docs/_build/html/algorithm.html [more pages...]
  python docs/check_math.py --screenshot-dir DIR PAGE...   # also PNGs

Each page is opened from a file:// URL with networking disabled, its DOM is
dumped after the scripts ran, and the page passes when it holds KaTeX output
(at least ``--min-katex`` ``.katex`` nodes and ``--min-display`` display
equations), no KaTeX error node, and
no raw TeX (``\\frac``, ``\\(``, ``\\[``, ...) in its visible text (KaTeX's
hidden MathML copy of each formula, which holds the source, is skipped).
Exits non-zero on the first failing page.
"""

import argparse
import html.parser
import pathlib
import shutil
import subprocess
import sys
import tempfile

RAW_TEX = ('\\frac', '\\(', '\\)', '\\[', '\\]', '\\operatorname', '\\beta',
           '\\begin{', '\\mathrm')


def chromium() -> str:
  for name in ('chromium', 'chromium-browser', 'google-chrome'):
    path = shutil.which(name)
    if path:
      return path
  sys.exit('chromium not found: apt-get install -y chromium')


def run_chromium(url: str, *extra: str) -> str:
  with tempfile.TemporaryDirectory() as profile:
    cmd = [chromium(), '--headless', '--no-sandbox', '--disable-gpu',
           '--disable-background-networking', '--disable-component-update',
           '--disable-sync', '--no-first-run', '--disable-extensions',
           f'--user-data-dir={profile}', '--virtual-time-budget=10000',
           *extra, url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
  if proc.returncode != 0:
    sys.exit(f'chromium failed ({proc.returncode}):\n{proc.stderr[-2000:]}')
  return proc.stdout


class _Visible(html.parser.HTMLParser):
  """Counts KaTeX nodes and collects the text a reader sees."""

  _HIDDEN_TAGS = {'script', 'style', 'head', 'annotation', 'math'}

  def __init__(self):
    super().__init__()
    self.stack: list[bool] = []  # per open element: is it hidden?
    self.text: list[str] = []
    self.katex = self.display = self.errors = 0

  def handle_starttag(self, tag, attrs):
    classes = (dict(attrs).get('class') or '').split()
    self.katex += 'katex' in classes
    self.display += 'katex-display' in classes
    self.errors += 'katex-error' in classes
    hidden = (tag in self._HIDDEN_TAGS or 'katex-mathml' in classes
              or (self.stack and self.stack[-1]))
    if tag not in ('br', 'img', 'meta', 'link', 'input', 'hr', 'wbr'):
      self.stack.append(bool(hidden))

  def handle_endtag(self, tag):
    if tag not in ('br', 'img', 'meta', 'link', 'input', 'hr', 'wbr'):
      if self.stack:
        self.stack.pop()

  def handle_data(self, data):
    if not (self.stack and self.stack[-1]):
      self.text.append(data)


def check(page: pathlib.Path, screenshot_dir: pathlib.Path | None,
          min_katex: int = 1, min_display: int = 0) -> list[str]:
  url = page.resolve().as_uri()
  parser = _Visible()
  parser.feed(run_chromium(url, '--dump-dom'))
  visible = ' '.join(parser.text)
  problems = []
  if parser.katex < min_katex:
    problems.append(f'{parser.katex} KaTeX formulas (.katex), expected at '
                    f'least {min_katex}')
  if parser.display < min_display:
    problems.append(f'{parser.display} display equations (.katex-display), '
                    f'expected at least {min_display}')
  if parser.errors:
    problems.append(f'{parser.errors} KaTeX error node(s) (.katex-error)')
  for tex in RAW_TEX:
    at = visible.find(tex)
    if at >= 0:
      problems.append(f'raw TeX {tex!r} in visible text: '
                      f'...{visible[max(at - 60, 0):at + 60]!r}...')
  print(f'{page}: {parser.katex} KaTeX nodes, {parser.display} display, '
        f'{len(problems)} problem(s)')
  if screenshot_dir is not None:
    screenshot_dir.mkdir(parents=True, exist_ok=True)
    out = screenshot_dir / f'{page.stem}.png'
    run_chromium(url, f'--screenshot={out.resolve()}',
                 '--window-size=1280,2400', '--hide-scrollbars')
    print(f'  screenshot: {out}')
  return problems


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('pages', nargs='+', type=pathlib.Path)
  parser.add_argument('--screenshot-dir', type=pathlib.Path)
  parser.add_argument('--min-katex', type=int, default=1,
                      help='typeset formulas each page must hold')
  parser.add_argument('--min-display', type=int, default=0,
                      help='display equations each page must hold')
  args = parser.parse_args()
  failed = False
  for page in args.pages:
    for problem in check(page, args.screenshot_dir, args.min_katex,
                         args.min_display):
      print(f'  FAIL: {problem}')
      failed = True
  sys.exit(1 if failed else 0)


if __name__ == '__main__':
  main()
