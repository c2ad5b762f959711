"""Earlier spellings of command-line flags and values, kept as deprecated.

`deprecated_flag` adds an old flag that still works and prints one warning
line naming its new spelling; `warn_deprecated_values` does the same for
values (an optimizer's old name). The commands of ``experiments`` use them
so that committed command lines (each results folder's ``COMMAND.txt``)
keep running.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any


class _Deprecated(argparse.Action):
  """An earlier spelling of a flag: stores into the new flag's ``dest``
  and prints one warning line naming the new spelling."""

  def __init__(self, option_strings: Sequence[str], dest: str,
               new: str = '', **kwargs: Any):
    self.new = new
    super().__init__(option_strings, dest, **kwargs)

  def __call__(self, parser: argparse.ArgumentParser,
               namespace: argparse.Namespace, values: Any,
               option_string: str | None = None) -> None:
    print(f'{parser.prog}: warning: {option_string} is deprecated: use '
          f'{self.new}', file=sys.stderr)
    setattr(namespace, self.dest, values)


def deprecated_flag(parser: Any, old: str, new: str, dest: str,
                    **kwargs: Any) -> None:
  """Adds ``old`` as a deprecated spelling of the flag ``new`` (same
  ``dest``, same ``type``); its help says so."""
  parser.add_argument(old, dest=dest, action=_Deprecated, new=new,
                      default=argparse.SUPPRESS,
                      help=f'deprecated spelling of {new}', **kwargs)


def warn_deprecated_values(prog: str, argv: Sequence[str],
                           deprecated: dict[str, str]) -> None:
  """Prints one warning line per deprecated value in ``argv`` (a word of
  an argument, split at ``,`` and ``=``): ``deprecated`` maps it to what
  to use instead."""
  seen = []
  for arg in argv:
    for word in str(arg).replace('=', ',').split(','):
      if word in deprecated and word not in seen:
        seen.append(word)
        print(f'{prog}: warning: {word!r} is deprecated: use '
              f'{deprecated[word]}', file=sys.stderr)
