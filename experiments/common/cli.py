"""Argument types shared by the experiment CLIs: bad values are usage errors.

Each function is an argparse ``type=``: it returns the parsed value or raises
`argparse.ArgumentTypeError`, which argparse turns into one line,
``<prog>: error: argument --flag: <what is allowed>``, and exit status 2,
before the script has written anything.
"""

from __future__ import annotations

import argparse
import math
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from typing import Any

_Parse = Callable[[str], Any]


def _number(text: str, kind: type) -> Any:
  try:
    value = kind(text)
  except ValueError:
    raise argparse.ArgumentTypeError(
      f'expected {"an integer" if kind is int else "a number"}, got '
      f'{text!r}') from None
  if kind is float and not math.isfinite(value):
    raise argparse.ArgumentTypeError(f'must be finite, got {text!r}')
  return value


def int_at_least(low: int) -> _Parse:
  """An integer ``>= low``."""
  def parse(text: str) -> int:
    value = _number(text, int)
    if value < low:
      what = {1: 'a positive integer', 0: 'a non-negative integer'}.get(
        low, f'an integer >= {low}')
      raise argparse.ArgumentTypeError(f'must be {what}, got {text!r}')
    return value
  parse.__name__ = f'int>={low}'
  return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def float_in(low: float, high: float = math.inf, *, low_open: bool = False,
             high_open: bool = False) -> _Parse:
  """A finite float in the interval ``[low, high]`` (ends open on request)."""
  lb, rb = '(' if low_open else '[', ')' if high_open else ']'
  interval = f'{lb}{low:g}, {high:g}{rb}'.replace('inf]', 'inf)')

  def parse(text: str) -> float:
    value = _number(text, float)
    if (value < low or (low_open and value == low) or value > high
        or (high_open and value == high)):
      raise argparse.ArgumentTypeError(f'must be in {interval}, got {text!r}')
    return value
  parse.__name__ = f'float in {interval}'
  return parse


positive_float = float_in(0.0, low_open=True)
non_negative_float = float_in(0.0)
unit_interval = float_in(0.0, 1.0)
decay = float_in(0.0, 1.0, high_open=True)  # EMA decays: [0, 1)


def choice(options: Sequence[str]) -> _Parse:
  """One of ``options`` (the error lists them)."""
  def parse(text: str) -> str:
    if text not in options:
      raise argparse.ArgumentTypeError(
        f'must be one of {", ".join(options)}; got {text!r}')
    return text
  parse.__name__ = 'choice'
  return parse


def comma_list(item: _Parse, *, allowed_empty: bool = False) -> _Parse:
  """A comma-separated list, each item parsed by ``item``."""
  def parse(text: str) -> list[Any]:
    parts = [p.strip() for p in text.split(',') if p.strip()]
    if not parts and not allowed_empty:
      raise argparse.ArgumentTypeError('must list at least one value')
    out = []
    for part in parts:
      try:
        out.append(item(part))
      except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f'item {part!r}: {e}') from None
    return out
  parse.__name__ = 'list'
  return parse


_MESH_PART = re.compile(r'^\s*(data|fsdp|model)\s*=\s*([0-9]+)\s*$')


def mesh_spec(text: str) -> str:
  """``''`` or ``data=N[,fsdp=F][,model=M]`` with positive sizes, each axis
  once."""
  if not text.strip():
    return ''
  seen = set()
  for part in text.split(','):
    m = _MESH_PART.match(part)
    if not m or int(m.group(2)) < 1 or m.group(1) in seen:
      raise argparse.ArgumentTypeError(
        f"must be '' or data=N,model=M with positive N, M (each axis "
        f'once), got {text!r}')
    seen.add(m.group(1))
  return text


def command_line(argv: Sequence[str] | None, module: str) -> str:
  """The shell command ``python -m <module> <argv>`` of this invocation."""
  args = sys.argv[1:] if argv is None else list(argv)
  return shlex.join(['python', '-m', module, *map(str, args)])
