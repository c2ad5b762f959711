"""What a compiled SPMD program communicates, read from its HLO text.

`collectives` lists every collective of ``compiled.as_text()`` with the
bytes its result holds on each device and the bytes each device sends
(`traffic_bytes`, the ring algorithm's), and where it runs: on every step,
or inside a branch of a conditional. `conditionals` lists the conditionals
and the bytes of their operands. Both count XLA's forms of one collective:
synchronous ones, tuple-shaped ones (several arrays in one all-reduce), the
``-start`` halves of asynchronous pairs (whose type holds the operands
beside the results) and collectives wrapped in an ``async-start``'s
computation.
"""

from __future__ import annotations

import math
import re
from typing import Any

KINDS = ('all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all',
         'collective-permute', 'collective-broadcast', 'ragged-all-to-all')

_DTYPE_BYTES = {
  'pred': 1, 's2': 0.25, 'u2': 0.25, 's4': 0.5, 'u4': 0.5, 's8': 1, 'u8': 1,
  'f8e4m3fn': 1, 'f8e5m2': 1, 'f8e4m3': 1, 'f8e3m4': 1, 'f8e4m3b11fnuz': 1,
  'f8e4m3fnuz': 1, 'f8e5m2fnuz': 1, 'f8e8m0fnu': 1, 'f4e2m1fn': 0.5,
  's16': 2, 'u16': 2, 'f16': 2, 'bf16': 2, 's32': 4, 'u32': 4, 'f32': 4,
  's64': 8, 'u64': 8, 'f64': 8, 'c64': 8, 'c128': 16, 'token': 0,
}
_INSTR = re.compile(
  r'^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<type>.+?)\s'
  r'(?P<op>[a-z][a-z0-9\-]*)\((?P<rest>.*)$')
_ARRAY = re.compile(r'\b([a-z][a-z0-9]*)\[([0-9,]*)\]')
_CALLS = re.compile(r'(?:calls|to_apply|body|condition|true_computation|'
                    r'false_computation)=%?([\w.\-]+)')
_BRANCHES = re.compile(r'branch_computations=\{([^}]*)\}')
_TRUE_FALSE = re.compile(r'(true|false)_computation=%?([\w.\-]+)')
_GROUPS_LIST = re.compile(r'replica_groups=\{(\{[0-9,]*\}(?:,\{[0-9,]*\})*)'
                          r'\}')
_GROUPS_IOTA = re.compile(r'replica_groups=\[([0-9]+),([0-9]+)\]<=')
# replica_groups=mesh['axis_0'=4,'axis_1'=2][, device_ids=(...)] {'axis_0'}:
# the groups span the named axes of that grid.
_GROUPS_MESH = re.compile(r"replica_groups=mesh\[([^\]]*)\]"
                          r"(?:, device_ids=\([^)]*\)\))?\s*\{([^}]*)\}")


def arrays(type_text: str) -> list[tuple[str, tuple[int, ...]]]:
  """``(dtype, shape)`` of every array in an HLO type, in order."""
  out = []
  for dtype, dims in _ARRAY.findall(type_text):
    if dtype in _DTYPE_BYTES:
      out.append((dtype, tuple(int(d) for d in dims.split(',') if d)))
  return out


def nbytes(dtype: str, shape: tuple[int, ...]) -> float:
  return _DTYPE_BYTES[dtype] * math.prod(shape)


def _tuple_elements(type_text: str) -> list[str]:
  """The top-level elements of a tuple type ``(a, (b, c), d)``."""
  text = type_text.strip()
  if not text.startswith('('):
    return [text]
  parts, depth, start = [], 0, 1
  for i, ch in enumerate(text):
    if ch in '({[':
      depth += 1
    elif ch in ')}]':
      depth -= 1
      if depth == 0:
        parts.append(text[start:i])
        break
    elif ch == ',' and depth == 1:
      parts.append(text[start:i])
      start = i + 1
  return [p.strip() for p in parts if p.strip()]


def _result_arrays(op: str, type_text: str
                   ) -> list[tuple[str, tuple[int, ...]]]:
  """The arrays a collective delivers (``-start`` types hold operands)."""
  if op in ('all-gather-start', 'collective-permute-start'):
    # (operands, results[, contexts]): the second element is the result.
    elements = _tuple_elements(type_text)
    return arrays(elements[1]) if len(elements) > 1 else arrays(type_text)
  return arrays(type_text)


def _group_size(line: str, num_devices: int) -> int:
  m = _GROUPS_MESH.search(line)
  if m:
    sizes = dict(re.findall(r"'([\w]+)'=([0-9]+)", m.group(1)))
    names = re.findall(r"'([\w]+)'", m.group(2))
    return math.prod(int(sizes[n]) for n in names)
  m = _GROUPS_IOTA.search(line)
  if m:
    return int(m.group(2))
  m = _GROUPS_LIST.search(line)
  if m:
    first = m.group(1).split('}')[0].strip('{')
    return len([d for d in first.split(',') if d])
  return num_devices  # replica_groups={} : every device


def traffic_bytes(kind: str, result_bytes: float, group: int) -> float:
  """Bytes one device sends for a collective (ring algorithms).

  all-reduce ``2 (n - 1) / n S``; all-gather and all-to-all
  ``(n - 1) / n S``; reduce-scatter ``(n - 1) S`` (S: the result on one
  device, n: the group size); a permute or broadcast sends its result.
  """
  n = max(group, 1)
  if kind == 'all-reduce':
    return 2 * (n - 1) / n * result_bytes
  if kind in ('all-gather', 'all-to-all', 'ragged-all-to-all'):
    return (n - 1) / n * result_bytes
  if kind == 'reduce-scatter':
    return (n - 1) * result_bytes
  return result_bytes


def _computations(hlo: str) -> dict[str, list[str]]:
  comps: dict[str, list[str]] = {}
  current = None
  for line in hlo.splitlines():
    head = re.match(r'^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$', line)
    if head and not line.startswith(' '):
      current = head.group(1)
      comps[current] = []
    elif current is not None and line.strip() and line.strip() != '}':
      comps[current].append(line)
  return comps


def _branches(line: str) -> list[str]:
  m = _BRANCHES.search(line)
  if m:
    return [b.strip().lstrip('%') for b in m.group(1).split(',')]
  found = dict(_TRUE_FALSE.findall(line))
  # lax.cond's false branch is branch 0, its true branch branch 1.
  return [found[k] for k in ('false', 'true') if k in found]


def _owners(comps: dict[str, list[str]]) -> dict[str, str]:
  """Computation -> 'branch i of <conditional>' for those inside a branch."""
  callees: dict[str, set[str]] = {c: set() for c in comps}
  branches = []
  for c, lines in comps.items():
    for line in lines:
      callees[c].update(_CALLS.findall(line))
      m = _INSTR.match(line)
      if m and m.group('op') == 'conditional':
        for i, b in enumerate(_branches(line)):
          branches.append((m.group('name'), i, b))
          callees[c].add(b)
  owner: dict[str, str] = {}
  for cond, i, root in branches:
    todo, seen = [root], set()
    while todo:
      c = todo.pop()
      if c in seen or c not in comps:
        continue
      seen.add(c)
      owner.setdefault(c, f'branch {i} of {cond}')
      todo.extend(callees[c])
  return owner


def collectives(hlo: str, num_devices: int) -> list[dict[str, Any]]:
  """Every collective of a compiled HLO module.

  Args:
    hlo: ``compiled.as_text()`` of an SPMD program.
    num_devices: devices of the program (the group of
      ``replica_groups={}``).

  Returns:
    One dict per collective: ``kind`` (e.g. 'all-gather'), ``op`` (the HLO
    op, e.g. 'all-gather-start'), ``arrays`` (``[dtype, shape]`` of each
    array it delivers to a device), ``bytes`` (their total), ``group``
    (devices per replica group), ``traffic`` (`traffic_bytes`), ``where``
    ('every step', or 'branch i of <conditional>') and ``name``.
  """
  comps = _computations(hlo)
  owner = _owners(comps)
  found = []
  for c, lines in comps.items():
    for line in lines:
      m = _INSTR.match(line)
      if not m:
        continue
      op = m.group('op')
      kind = op.removesuffix('-start')
      if kind not in KINDS:
        continue
      result = _result_arrays(op, m.group('type'))
      size = sum(nbytes(d, s) for d, s in result)
      group = _group_size(line, num_devices)
      found.append({
        'kind': kind, 'op': op, 'name': m.group('name'),
        'arrays': [[d, list(s)] for d, s in result], 'bytes': size,
        'group': group, 'traffic': traffic_bytes(kind, size, group),
        'where': owner.get(c, 'every step')})
  return found


def conditionals(hlo: str) -> list[dict[str, Any]]:
  """Every conditional: name, branches, operand bytes per device, where.

  The operands are those after the predicate (or branch index), each a
  tuple for its branch; their bytes are what XLA must hold materialised
  for the branch to read.
  """
  comps = _computations(hlo)
  owner = _owners(comps)
  out = []
  for comp, lines in comps.items():
    types = {}
    for line in lines:
      m = _INSTR.match(line)
      if m:
        types[m.group('name')] = m.group('type')
    for line in lines:
      m = _INSTR.match(line)
      if not m or m.group('op') != 'conditional':
        continue
      names = re.findall(r'%([\w.\-]+)', m.group('rest').split('),')[0])
      found = [a for n in names[1:] for a in arrays(types.get(n, ''))]
      out.append({'name': m.group('name'), 'branches': _branches(line),
                  'operand_bytes': sum(nbytes(d, s) for d, s in found),
                  'operand_arrays': len(found),
                  'where': owner.get(comp, 'every step')})
  return out


_TABLES = ('FileNames', 'FunctionNames', 'FileLocations', 'StackFrames')


def _frames(hlo: str) -> dict[str, dict[int, str]]:
  """The module's stack-frame tables (``FileNames`` ... ``StackFrames``)."""
  tables: dict[str, dict[int, str]] = {t: {} for t in _TABLES}
  section = None
  for line in hlo.splitlines():
    if line in tables:
      section = line
    elif section and re.match(r'^\d+ ', line):
      index, rest = line.split(' ', 1)
      tables[section][int(index)] = rest
    else:
      section = None
  return tables


def _chain(tables: dict[str, dict[int, str]], frame: int
           ) -> list[tuple[str, str]]:
  """``(file, function)`` of a stack frame and its callers, innermost first."""
  out, seen = [], set()
  while frame and frame not in seen and frame in tables['StackFrames']:
    seen.add(frame)
    entry = tables['StackFrames'][frame]
    loc = tables['FileLocations'][int(
      re.search(r'file_location_id=(\d+)', entry).group(1))]
    out.append((
      tables['FileNames'][int(re.search(r'file_name_id=(\d+)', loc)
                              .group(1))].strip('"'),
      tables['FunctionNames'][int(re.search(r'function_name_id=(\d+)', loc)
                                  .group(1))].strip('"')))
    frame = int(re.search(r'parent_frame_id=(\d+)', entry).group(1))
  return out


def instructions_by_source(hlo: str) -> dict[str, Any]:
  """How many instructions of a compiled module each part of the code made.

  Every instruction (fused computations' included) is counted once, under
  the innermost frame of its stack that is in ``sgg_optax/_src``
  (``'sgg_optax/<module>.py:<function>'``), else ``'model'`` (the
  experiments' LLaMA and flax), ``'optax'``, or ``'unattributed'`` (no
  stack: most of XLA's own fusion parameters and bookkeeping). Compile
  time grows with the instruction count.

  Returns:
    ``total`` and ``by_source`` (counts, largest first).
  """
  tables = _frames(hlo)
  counts: dict[str, int] = {}
  total = 0
  for line in hlo.splitlines():
    if not line.startswith('  ') or not _INSTR.match(line):
      continue
    total += 1
    m = re.search(r'stack_frame_id=(\d+)', line)
    chain = _chain(tables, int(m.group(1))) if m else []
    key = 'unattributed'
    for file, function in chain:
      if 'sgg_optax/_src/' in file:
        key = f'sgg_optax/{file.split("sgg_optax/_src/")[-1]}:{function}'
        break
    else:
      if any('optax' in f and 'sgg_optax' not in f for f, _ in chain):
        key = 'optax'
      elif chain:
        key = 'model'
    counts[key] = counts.get(key, 0) + 1
  return {'total': total,
          'by_source': dict(sorted(counts.items(), key=lambda kv: -kv[1]))}


def summarize(found: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
  """Count, bytes and traffic per kind (`collectives` or `compact` entries).
  """
  out: dict[str, dict[str, Any]] = {}
  for c in found:
    n = c.get('count', 1)
    row = out.setdefault(c['kind'], {'count': 0, 'bytes': 0.0,
                                     'traffic': 0.0})
    row['count'] += n
    row['bytes'] += n * c['bytes']
    row['traffic'] += n * c['traffic']
  return dict(sorted(out.items()))


def signature(found: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
  """Sorted ``(kind, arrays, group)`` of each collective (`collectives` or
  `compact` entries): equal for the same collectives moving the same
  bytes."""
  out = []
  for c in found:
    out += [(c['kind'], repr(c['arrays']), c['group'])] * c.get('count', 1)
  return sorted(out)


def compact(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """`collectives` entries merged when kind, arrays, group and place agree.

  Returns:
    One dict per distinct collective with its ``count`` and per-device
    ``bytes`` and ``traffic`` of one instance, sorted.
  """
  merged: dict[tuple[Any, ...], dict[str, Any]] = {}
  for c in found:
    key = (c['kind'], repr(c['arrays']), c['group'], c['where'])
    if key in merged:
      merged[key]['count'] += 1
    else:
      merged[key] = {k: c[k] for k in ('kind', 'arrays', 'group', 'where',
                                       'bytes', 'traffic')}
      merged[key]['count'] = 1
  return [merged[k] for k in sorted(merged, key=repr)]
