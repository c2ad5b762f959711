"""The table of tests/conftest.py that moves cases to the slow set names
tests that exist: a renamed test would otherwise run in the fast set again,
unnoticed, and the fast set would slowly grow back."""

import ast
import pathlib

import pytest

from tests import conftest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _test_functions(path: pathlib.Path) -> set[str]:
  tree = ast.parse(path.read_text())
  return {node.name for node in tree.body
          if isinstance(node, ast.FunctionDef) and node.name.startswith(
              'test_')}


@pytest.mark.parametrize('table', ['SLOW', 'FAST'])
def test_every_entry_names_a_test(table):
  missing = []
  for node_id in getattr(conftest, table):
    path, _, name = node_id.partition('::')
    file = ROOT / path
    if not file.is_file() or name not in _test_functions(file):
      missing.append(node_id)
  assert not missing, f'{table} names tests that do not exist: {missing}'


class _Item:
  """What pytest_collection_modifyitems reads of a collected test."""

  def __init__(self, nodeid):
    self.nodeid, self.marks = nodeid, []

  def add_marker(self, mark):
    self.marks.append(mark)


_SHARDED = ('tests/test_sharding.py::'
            'test_stacked_layers_sharded_on_the_layer_axis')


@pytest.mark.parametrize('node_id,slow', [
    ('tests/test_compile.py::test_more_clusters_compile_no_new_kernel', True),
    ('tests/test_transform.py::test_stacked_layers_equal_separate_layers[3]',
     True),
    ('tests/test_transform.py::test_stacked_layers_equal_separate_layers[12]',
     False),
    (_SHARDED + "[chain-gather-dynamic-P('data', None, None)]", True),
    (_SHARDED + "[chain-select_chain-frozen-P('data', None, None)]", False),
    ('tests/test_transform.py::test_moment_name_must_exist', False),
])
def test_the_table_marks_what_it_names(node_id, slow):
  item = _Item(node_id)
  conftest.pytest_collection_modifyitems(None, [item])
  assert bool(item.marks) == slow
