"""What every run JSON records: the code, command and machine behind it.

Every experiment writes :func:`provenance` into its run JSONs under the key
``'provenance'``, and SGG runs add :func:`clamped_fraction`. The source
hashes are taken when this module is first imported, so they name the code
the process runs even if the working tree changes while it runs.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np

# This file is experiments/common/records.py: all of experiments/ is the
# folder above its own, the repository root the one above that.
_EXPERIMENTS_DIR = pathlib.Path(__file__).resolve().parents[1]
ROOT = _EXPERIMENTS_DIR.parent
# What makes a result: the library, the experiment code and the build file.
# Results folders are outputs, not code.
_CODE_PATHS = ('sgg_optax', 'experiments', 'pyproject.toml',
               ':(exclude)experiments/results')


def source_sha256(package: pathlib.Path) -> str:
  """SHA-256 of every ``.py`` file below ``package`` (paths and bytes)."""
  digest = hashlib.sha256()
  for path in sorted(package.rglob('*.py')):
    if 'results' in path.relative_to(package).parts:
      continue
    digest.update(path.relative_to(package).as_posix().encode())
    digest.update(b'\0')
    digest.update(path.read_bytes())
  return digest.hexdigest()


def _sgg_optax_dir() -> pathlib.Path:
  import sgg_optax
  return pathlib.Path(sgg_optax.__file__).resolve().parent


SGG_OPTAX_SOURCE = source_sha256(_sgg_optax_dir())
EXPERIMENTS_SOURCE = source_sha256(_EXPERIMENTS_DIR)


def _git(*args: str) -> str | None:
  try:
    return subprocess.run(['git', *args], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return None


def git_state() -> tuple[str, bool | None]:
  """HEAD and whether the code differs from it (None: not a checkout).

  Only the code counts (``sgg_optax/``, ``experiments/`` but its results,
  ``pyproject.toml``), tracked or not, so a run that rewrites committed
  results is not "dirty" for it.
  """
  head = _git('rev-parse', 'HEAD')
  if head is None:
    return 'unknown', None
  status = _git('status', '--porcelain', '--untracked-files=all', '--',
                *_CODE_PATHS)
  return head, bool(status)


_GIT_COMMIT, _DIRTY = git_state()  # at import, like the source hashes


def _version(dist: str) -> str | None:
  try:
    return importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError:
    return None


def versions() -> dict[str, str | None]:
  """Versions of Python and the libraries a result depends on."""
  out = {'python': platform.python_version()}
  for dist in ('jax', 'jaxlib', 'optax', 'flax', 'orbax-checkpoint', 'numpy',
               'sgg_optax'):
    out[dist] = _version(dist)
  return out


# CPU features that decide how XLA:CPU rounds 16-bit floats (native FP16 or
# BF16 arithmetic, AMX tiles) and how wide its vector loops are.
_CPU_FLAGS = ('avx512', 'amx', 'f16c', 'avx_vnni', 'fma', 'avx2')


def cpu() -> dict[str, Any]:
  """The host CPU's model and the flags that change XLA:CPU's rounding.

  A CPU run reproduces bitwise only on the same instruction set and the
  same number of usable cores (``device()['cpu_affinity']``).
  """
  model, flags = platform.processor() or platform.machine(), []
  try:
    text = pathlib.Path('/proc/cpuinfo').read_text()
  except OSError:
    text = ''
  for line in text.splitlines():
    key, _, value = line.partition(':')
    key = key.strip()
    if key == 'model name':
      model = value.strip()
    elif key in ('flags', 'Features') and not flags:
      flags = sorted(f for f in value.split() if f.startswith(_CPU_FLAGS))
  return {'model': model, 'flags': flags}


def device() -> dict[str, Any]:
  """The devices and host the process runs on.

  ``cpu_affinity`` is the number of cores the process may run on: XLA:CPU
  sizes its thread pool by it and splits some reductions by thread, so on
  the CPU a run reproduces bitwise only with as many usable cores (a run
  pinned to one core of the 2-core machine ended 304.51 test PPL where
  the same run on both cores ended 303.66).
  """
  import jax
  dev = jax.devices()[0]
  return {
      'platform': dev.platform, 'device_kind': dev.device_kind,
      'device_count': jax.device_count(),
      'local_device_count': jax.local_device_count(),
      'process_count': jax.process_count(), 'host': platform.node(),
      'cpu_count': os.cpu_count(),
      'cpu_affinity': len(os.sched_getaffinity(0)),
      'cpu': cpu(),
  }


# Environment variables that change what XLA compiles or how fast it runs
# (the host allocator's, too: see docs/performance.md).
_ENV = ('XLA_FLAGS', 'GLIBC_TUNABLES', 'LD_PRELOAD', 'MALLOC_ARENA_MAX')


def environment() -> dict[str, str]:
  """The set ones of :data:`_ENV` and every ``JAX_*`` variable."""
  return {k: v for k, v in sorted(os.environ.items())
          if k in _ENV or k.startswith('JAX_')}


def provenance(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """The ``'provenance'`` record of a run JSON.

  Args:
    argv: the command line (default: this process's ``sys.argv``); the
      entry module is written as ``python -m experiments.<name>``.

  Returns:
    ``git_commit``, ``dirty`` (False for results fit to commit), ``command``,
    ``sgg_optax_source_sha256``, ``experiments_source_sha256``,
    ``versions``, ``device`` and ``environment`` (:func:`environment`).
  """
  if argv is None:
    argv = sys.argv
  argv = [str(a) for a in argv]
  if argv and argv[0].endswith('.py'):
    module = pathlib.Path(argv[0]).resolve()
    try:
      rel = module.relative_to(ROOT).with_suffix('')
      argv = ['python', '-m', '.'.join(rel.parts)] + argv[1:]
    except ValueError:
      pass
  return {
      'git_commit': _GIT_COMMIT,
      'dirty': _DIRTY,
      'command': argv,
      'sgg_optax_source_sha256': SGG_OPTAX_SOURCE,
      'experiments_source_sha256': EXPERIMENTS_SOURCE,
      'versions': versions(),
      'device': device(),
      'environment': environment(),
  }


def code_key(parts: Sequence[str] | None = None) -> str:
  """A run-cache key from the library's and the experiment code's sources.

  Args:
    parts: the paths below ``experiments/`` (folders or ``.py`` files) whose
      code decides a run's numbers; ``None``: all of ``experiments/``. A
      narrower key keeps the committed runs of a resumable sweep reusable
      while the code that only drives, reports or plots them changes.

  Returns:
    32 hex digits: 16 of the library's hash, 16 of the parts'.
  """
  if parts is None:
    return SGG_OPTAX_SOURCE[:16] + EXPERIMENTS_SOURCE[:16]
  digest = hashlib.sha256()
  for part in sorted(parts):
    path = _EXPERIMENTS_DIR / part
    if not path.exists():
      raise ValueError(f'experiments/{part} does not exist')
    digest.update(part.encode() + b'\0')
    digest.update((source_sha256(path) if path.is_dir()
                   else hashlib.sha256(path.read_bytes()).hexdigest()).encode())
  return SGG_OPTAX_SOURCE[:16] + digest.hexdigest()[:16]


def clamped_fraction(scales: Any, clamp: tuple[float, float],
                     rtol: float = 1e-5) -> float:
  """Share of (layer, cluster) scales sitting at a clamp bound.

  Args:
    scales: the scales, e.g. ``sgg_optax.cluster_summary(state).scales``.
    clamp: SGG's ``(low, high)``.
    rtol: relative tolerance of "at a bound" (float32 rounding).

  Returns:
    A fraction in ``[0, 1]`` (0 for no scales).
  """
  s = np.asarray(scales, np.float64).ravel()
  if s.size == 0:
    return 0.0
  lo, hi = clamp
  at = np.isclose(s, lo, rtol=rtol, atol=0) | np.isclose(s, hi, rtol=rtol,
                                                          atol=0)
  return float(np.mean(at))


def json_default(x: Any) -> Any:
  """JSON for NumPy and JAX values (lists, numbers); others as text."""
  if isinstance(x, np.generic | np.ndarray) or hasattr(x, '__array__'):
    return np.asarray(x).tolist()
  return str(x)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
  """Writes ``obj`` as indented JSON, atomically (a finished temporary file
  renamed onto ``path``), so a killed run never leaves half a file."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  # A unique temporary name: two runs writing one path at once (or in the
  # same second) never share a half-written file.
  fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp',
                             dir=path.parent)
  try:
    os.fchmod(fd, 0o644)  # mkstemp's 0o600 would hide results from others
    with os.fdopen(fd, 'w') as f:
      f.write(json.dumps(obj, indent=1, default=json_default))
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise
