"""One program's per-device cost, read from its compiled form.

`measure` lowers and compiles a `programs.VARIANTS` program and returns its
record: memory (``memory_analysis()``), collectives and conditionals (the
HLO, `experiments.scaling.hlo`), FLOPs and bytes accessed
(``cost_analysis()``) with a roofline step time on `ACCELERATORS`, the
lowering and compile seconds, and the parameters SGG groups with the ids'
memory floor. `measure_pair` measures Adam (`adam_reference`) and a
variant (`measure_variant`) in one process, Adam first, so their compile
times compare on the same machine state.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp

from experiments.scaling import hlo, programs

# Peak dense bf16 FLOP/s, HBM bandwidth and inter-chip bandwidth per chip
# (vendor figures): TPU v5p (459 TFLOP/s, 2,765 GB/s HBM2e, ICI 4,800
# Gbit/s = 600 GB/s) and H100 SXM (989 TFLOP/s dense, 3.35 TB/s HBM3,
# NVLink 900 GB/s both directions = 450 GB/s each way).
ACCELERATORS = {
  'TPU v5p': {'flops': 459e12, 'hbm': 2.765e12, 'link': 600e9},
  'H100 SXM': {'flops': 989e12, 'hbm': 3.35e12, 'link': 450e9},
}


def roofline(flops: float, hbm_bytes: float, link_bytes: float
             ) -> dict[str, dict[str, float]]:
  """Step-time estimates per accelerator: the slowest of three floors.

  ``max(flops / peak, hbm_bytes / hbm, link_bytes / link)``: compute,
  memory traffic and collective traffic per device, each at its peak and
  perfectly overlapped.
  """
  out = {}
  for name, peak in ACCELERATORS.items():
    terms = {'compute_s': flops / peak['flops'],
             'memory_s': hbm_bytes / peak['hbm'],
             'collective_s': link_bytes / peak['link']}
    out[name] = {**terms, 'step_s': max(terms.values())}
  return out


def _cost(compiled: Any) -> dict[str, float]:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {'flops': float(cost.get('flops', 0.0)),
          'bytes_accessed': float(cost.get('bytes accessed', 0.0))}


def _memory(compiled: Any) -> dict[str, int]:
  m = compiled.memory_analysis()
  out = {'argument': m.argument_size_in_bytes,
         'output': m.output_size_in_bytes, 'temp': m.temp_size_in_bytes,
         'alias': m.alias_size_in_bytes,
         'generated_code': m.generated_code_size_in_bytes}
  out['args_plus_temps'] = out['argument'] + out['temp']
  return out


def compile_program(s: programs.Setup, variant: programs.Variant,
                    compiler_options: dict[str, Any] | None = None
                    ) -> tuple[Any, dict[str, float]]:
  """The compiled program, from a cold cache, and how long it took.

  Returns:
    ``(compiled, seconds)``: ``lower_s`` and ``compile_s`` (wall clock),
    ``lower_cpu_s`` and ``compile_cpu_s`` (this process's CPU time, which
    other work on a shared machine does not stretch).
  """
  jax.clear_caches()
  w0, c0 = time.perf_counter(), time.process_time()
  lowered = programs.lower(s, variant)
  w1, c1 = time.perf_counter(), time.process_time()
  compiled = lowered.compile(compiler_options=compiler_options)
  w2, c2 = time.perf_counter(), time.process_time()
  return compiled, {'lower_s': w1 - w0, 'compile_s': w2 - w1,
                    'lower_cpu_s': c1 - c0, 'compile_cpu_s': c2 - c1}


def record(s: programs.Setup, variant: programs.Variant, compiled: Any
           ) -> dict[str, Any]:
  """What the compiled program holds, communicates and computes per device.

  Returns:
    ``memory`` (bytes), ``collectives`` (`hlo.compact`),
    ``collectives_by_kind`` (``every_step`` and ``in_conditionals``, each
    `hlo.summarize`), ``conditionals`` (`hlo.conditionals`), ``cost``
    (FLOPs and bytes accessed), ``roofline`` (`roofline`: XLA's cost
    analysis counts the costlier branch of a conditional, and collectives
    inside branches are counted too, so an on-device schedule is estimated
    as if it refreshed at every step), ``grouped`` (the parameters SGG
    groups, `programs.grouped_parameters`), ``ids_floor_bytes`` and
    ``hlo_instructions`` (`hlo.instructions_by_source`).
  """
  text = compiled.as_text()
  devices = s.mesh.size
  found = hlo.collectives(text, devices)
  every = [c for c in found if c['where'] == 'every step']
  branch = [c for c in found if c['where'] != 'every step']
  cost = _cost(compiled)
  traffic = sum(c['traffic'] for c in found)
  grouped = programs.grouped_parameters(s) if variant.form else []
  return {
    'memory': _memory(compiled),
    'collectives': hlo.compact(found),
    'collectives_by_kind': {'every_step': hlo.summarize(every),
                            'in_conditionals': hlo.summarize(branch)},
    'conditionals': hlo.conditionals(text),
    'cost': cost,
    'collective_traffic_bytes': traffic,
    'roofline': roofline(cost['flops'], cost['bytes_accessed'], traffic),
    'grouped': grouped,
    'ids_floor_bytes': sum(g['ids_bytes'] for g in grouped),
    'hlo_instructions': hlo.instructions_by_source(text),
  }


def _setup_info(s: programs.Setup) -> dict[str, Any]:
  model = {k: (jnp.dtype(v).name if k in ('dtype', 'param_dtype') else v)
           for k, v in vars(s.model).items()}
  return {
    'preset': s.cfg.preset, 'mesh': dict(s.mesh.shape),
    'devices': s.mesh.size, 'optimizer': s.cfg.optimizer,
    'batch': [s.cfg.batch_size, s.cfg.seq_len],
    'model': {**model, 'n_params': programs.parameter_count(s)},
    'rules': [list(r) for r in s.rules],
    'replicated_axes': list(s.replicated),
    'recluster_interval': s.cfg.recluster_interval,
  }


def adam_reference(cfg_of: Any,
                   compiler_options: dict[str, Any] | None = None,
                   vocab_size: int | None = None) -> dict[str, Any]:
  """Adam's train step, compiled from a cold cache: its `record` and times.

  Args:
    cfg_of: ``form -> TrainConfig`` (`programs.train_config` with the
      row's preset, mesh and batch); Adam's is ``cfg_of(None)``.
    compiler_options: passed to ``compile`` (e.g. a lower backend
      optimisation level in tests).
    vocab_size: the model's vocabulary (default: the preset's).
  """
  s = programs.setup(cfg_of(None), vocab_size)
  variant = programs.VARIANTS['adam']
  compiled, seconds = compile_program(s, variant, compiler_options)
  return {**record(s, variant, compiled), 'setup': s, 'seconds': seconds}


def measure_variant(cfg_of: Any, variant: programs.Variant,
                    adam: dict[str, Any],
                    compiler_options: dict[str, Any] | None = None,
                    vocab_size: int | None = None) -> dict[str, Any]:
  """``variant``'s program against Adam's (`adam_reference`).

  Returns:
    The variant's `record`, the set-up, ``timing`` (its lowering and
    compile seconds, wall and CPU, Adam's as ``adam_*``, and their sums'
    ratios ``ratio`` and ``cpu_ratio``) and Adam's memory, cost and
    collectives as ``adam``.
  """
  s = (adam['setup'] if variant.form is None
       else programs.setup(cfg_of(variant.form), vocab_size))
  compiled, seconds = compile_program(s, variant, compiler_options)
  out = {'variant': variant.name, 'label': variant.label,
         'form': variant.form, 'refresh': variant.refresh,
         'program': variant.program, **_setup_info(s),
         **record(s, variant, compiled)}
  a = adam['seconds']
  out['timing'] = {
    **seconds, **{f'adam_{k}': v for k, v in a.items()},
    # Lowering + compile against Adam's: wall clock, and CPU time.
    'ratio': ((seconds['lower_s'] + seconds['compile_s'])
              / max(a['lower_s'] + a['compile_s'], 1e-9)),
    'cpu_ratio': ((seconds['lower_cpu_s'] + seconds['compile_cpu_s'])
                  / max(a['lower_cpu_s'] + a['compile_cpu_s'], 1e-9))}
  out['adam'] = {k: adam[k] for k in ('memory', 'cost', 'collectives',
                                      'conditionals')}
  return out


def measure_pair(cfg_of: Any, variant: programs.Variant,
                 compiler_options: dict[str, Any] | None = None,
                 vocab_size: int | None = None) -> dict[str, Any]:
  """Adam's and ``variant``'s programs, compiled in this process.

  A throw-away compile warms the backend first; then Adam's train step
  and the variant's program are each lowered and compiled from a cold
  cache (for ``variant`` Adam itself, Adam compiles twice: the spread of
  the same program's compile time). Arguments as `measure_variant`.
  """
  jax.jit(lambda x: jnp.sin(x) @ x).lower(
    jax.ShapeDtypeStruct((64, 64), jnp.float32)).compile()
  adam = adam_reference(cfg_of, compiler_options, vocab_size)
  return measure_variant(cfg_of, variant, adam, compiler_options,
                         vocab_size)
