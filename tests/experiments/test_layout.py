"""The layout of experiments/: thin commands, small modules, no import cycle.

Reads the sources only (``ast``): nothing is imported or run.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXPERIMENTS = ROOT / 'experiments'
MAX_LINES = 450
# `python -m experiments.<name>` for every command; nothing else at the top.
COMMANDS = ('bench_overhead', 'bench_step', 'claims', 'demo', 'finetune',
            'podscale', 'pretrain', 'reproduce', 'soak', 'train')
PACKAGES = ('bench', 'common', 'finetuning', 'pretraining', 'report',
            'scaling')


def _modules() -> dict[str, pathlib.Path]:
  """Every module under experiments/ (results/ holds none), by name."""
  out = {}
  for path in sorted(EXPERIMENTS.rglob('*.py')):
    parts = path.relative_to(ROOT).with_suffix('').parts
    if parts[-1] == '__init__':
      parts = parts[:-1]
    out['.'.join(parts)] = path
  return out


def _imports(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
  """The experiments modules that ``name`` imports, at any depth of its code
  (a function-level import closes a cycle as surely as a top-level one)."""
  package = name if path.name == '__init__.py' else name.rpartition('.')[0]
  found = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      targets = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        anchor = package.split('.')[:len(package.split('.')) - node.level + 1]
        base = '.'.join(anchor + ([base] if base else []))
      # `from experiments.pkg import mod` imports experiments.pkg.mod.
      targets = [f'{base}.{alias.name}' for alias in node.names] + [base]
    else:
      continue
    for target in targets:
      while target and target not in known:
        target = target.rpartition('.')[0]
      if target and target != name and target != 'experiments':
        found.add(target)
  return found


def _graph() -> dict[str, set[str]]:
  modules = _modules()
  return {name: _imports(name, path, set(modules))
          for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle of ``graph`` (depth-first search), or None."""
  state: dict[str, int] = {}  # 1: on the current path, 2: done
  path: list[str] = []

  def visit(node: str) -> list[str] | None:
    state[node] = 1
    path.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == 1:
        return path[path.index(nxt):] + [nxt]
      if nxt not in state and (found := visit(nxt)):
        return found
    path.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state and (found := visit(node)):
      return found
  return None


def test_the_cycle_check_finds_a_cycle():
  assert _cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
  assert _cycle({'a': {'b', 'c'}, 'b': {'c'}, 'c': set()}) is None


def test_the_import_graph_of_experiments_is_acyclic():
  graph = _graph()
  report = graph['experiments.finetuning.report']
  assert 'experiments.finetuning.plots' in report
  cycle = _cycle(graph)
  assert cycle is None, ' -> '.join(cycle)


def test_no_module_is_longer_than_the_limit():
  long = {name: n for name, path in _modules().items()
          if (n := len(path.read_text().splitlines())) > MAX_LINES}
  assert not long, f'modules over {MAX_LINES} lines: {long}'


def test_the_top_level_holds_only_the_commands():
  top = {p.stem for p in EXPERIMENTS.glob('*.py')} - {'__init__'}
  assert top == set(COMMANDS)
  packages = {p.parent.name for p in EXPERIMENTS.glob('*/__init__.py')}
  assert packages == set(PACKAGES)


@pytest.mark.parametrize('command', COMMANDS)
def test_a_command_module_only_names_its_main(command):
  """Docstring, ``from experiments.<package>.<module> import main`` and the
  ``__main__`` block: the command's code lives in its package."""
  tree = ast.parse((EXPERIMENTS / f'{command}.py').read_text())
  assert ast.get_docstring(tree)
  imports = [n for n in tree.body if isinstance(n, ast.ImportFrom)]
  assert len(imports) == 1 and [a.name for a in imports[0].names] == ['main']
  assert imports[0].module.split('.')[1] in PACKAGES
  assert all(isinstance(n, ast.Import | ast.ImportFrom | ast.If | ast.Expr)
             for n in tree.body)


def test_every_command_names_itself_as_it_is_run():
  """The usage line of every command reads ``python -m experiments.<name>``
  (``prog=``), not the file that holds its parser."""
  modules = _modules()
  for name in COMMANDS:
    command = modules[f'experiments.{name}']
    (target,) = {t for t in _imports(f'experiments.{name}', command,
                                     set(modules))}
    source = modules[target].read_text()
    assert f"prog='python -m experiments.{name}'" in source, (name, target)
