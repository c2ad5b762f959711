"""Hypothesis profiles: ``ci`` (default) and ``long``.

``ci`` is small and derandomized, so CI runs the same examples every time;
select ``long`` with ``pytest --hypothesis-profile=long`` (or the
``HYPOTHESIS_PROFILE`` environment variable) for a deeper random search.
"""

import os
import shutil
import sys
import tempfile

import pytest
from hypothesis import HealthCheck, settings

# JAX compiles per tree, shape and dtype, so one example costs seconds: no
# deadline, and "too slow" generation is expected.
_SLOW_OK = dict(deadline=None,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
settings.register_profile('ci', max_examples=3, derandomize=True,
                          print_blob=True, **_SLOW_OK)
settings.register_profile('long', max_examples=30, print_blob=True,
                          **_SLOW_OK)
settings.load_profile(os.environ.get('HYPOTHESIS_PROFILE', 'ci'))


# One persistent XLA compilation cache per test session, in a temporary
# folder: the xdist workers and the scripts the tests start (how-to snippets,
# the experiments' commands) compile many of the same programs, and each is
# then compiled once. Set before the workers and subprocesses start, which
# inherit it; a cache the caller set is left alone.
_CACHE_ENV = {'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
              'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0'}


def pytest_configure(config):
  # When this file is imported after the Hypothesis plugin has applied
  # ``--hypothesis-profile``, apply it again over the default above.
  profile = config.getoption('--hypothesis-profile', None)
  if profile:
    settings.load_profile(profile)
  if (hasattr(config, 'workerinput')
      or 'JAX_COMPILATION_CACHE_DIR' in os.environ):
    return
  config.sgg_xla_cache = tempfile.mkdtemp(prefix='sgg-tests-xla-cache-')
  os.environ.update(JAX_COMPILATION_CACHE_DIR=config.sgg_xla_cache,
                    **_CACHE_ENV)
  if 'jax' in sys.modules:  # read from the environment at import
    import jax  # noqa: PLC0415
    jax.config.update('jax_compilation_cache_dir', config.sgg_xla_cache)
    for name, value in _CACHE_ENV.items():
      jax.config.update(name.lower(), int(value))


def pytest_unconfigure(config):
  cache = getattr(config, 'sgg_xla_cache', None)
  if cache:
    shutil.rmtree(cache, ignore_errors=True)


# What the fast set (the README's test command) leaves to the slow set.
# CI runs both (`.ci/run`: the test command, then `pytest -m slow`), so
# every test runs on every CI run. The fast set must take at most about 6
# minutes on the slowest 2-core CPU we meet, and nearly all of its time is
# XLA compiling SGG programs (about 2 s each on an AVX-512 EPYC at the
# default level, 1.5 s at the fast set's -O0, see ../conftest.py; about
# 1.6 times that without AVX-512). So the fast set keeps at least one case
# of every code path (form, mode, assignment, dtype, option), and the
# entries below, which repeat a path it covers or run the experiments end
# to end, run in the slow set. Each entry is a test's node id and the ids
# of its slow cases (None: the whole test), after a comment naming what
# covers it in the fast set. tests/test_fast_set.py checks that every entry
# names a test that exists.
SLOW: dict[str, tuple[str, ...] | None] = {
    # --- the library ---
    # The kernel count is one code path for every form and assignment:
    # [with_sgg-frozen] in the fast set.
    'tests/test_compile.py::'
    'test_more_layers_of_the_same_shapes_compile_no_new_kernel': (
        '[with_sgg-dynamic]', '[chain link-frozen]', '[chain link-dynamic]'),
    # A compile-cost guard (K = 20 against 255); K past the unroll is
    # compiled and checked in the fast set by the boundary K = 255 and the
    # NumPy reference at K = 12.
    'tests/test_compile.py::test_more_clusters_compile_no_new_kernel': None,
    # Bitwise against the own schedule, op by op (each primitive compiled
    # on its own: a 25 s warm-up per process); compiled, to float32
    # rounding, in the fast set ([frozen]).
    'tests/test_refresh_program.py::'
    'test_refresh_program_is_the_own_schedule_refresh_op_by_op': None,
    'tests/test_refresh_program.py::test_refresh_program_compiled': (
        '[dynamic]',),
    # Properties along random runs: the chain link in the fast set; the
    # momentum form (with_sgg, adamw_sgg) and the aliases whose SGG is
    # adamw_sgg's here (in the fast set the momentum form is checked against
    # its base before the first refresh in test_transform.py and
    # test_aliases_diagnostics.py, sharded in test_sharding.py, for memory
    # in test_memory.py). Identity before the first refresh
    # op by op: compiled, bitwise in float32 and float64, in
    # test_trajectory_properties and test_transform.py.
    'tests/test_properties.py::test_identity_before_first_refresh_op_by_op':
        None,
    'tests/test_properties.py::test_trajectory_properties': (
        '[momentum]', '[adamw_sgg]', '[lamb_sgg]', '[adafactor_sgg]'),
    # Jit against eager and random shardings: the chain link in the fast
    # set (the momentum form's state is sharded there in test_sharding.py).
    'tests/test_properties.py::test_jit_matches_eager': (
        '[momentum]', '[adamw_sgg]', '[lamb_sgg]', '[adafactor_sgg]'),
    'tests/test_properties.py::test_sharded_state_keeps_its_shardings': (
        '[momentum]', '[adamw_sgg]', '[lamb_sgg]', '[adafactor_sgg]'),
    # Each form and each K once in the fast set.
    'tests/test_properties.py::test_explicit_mesh_k': (
        '[chain-1]', '[momentum-9]'),
    # The chain link, frozen, in the fast set (the layer axis sharded under
    # explicit axes, both forms, in test_sharding.py).
    'tests/test_properties.py::test_auto_mesh_keeps_shardings': (
        '[chain-dynamic]', '[momentum-frozen]', '[momentum-dynamic]'),
    # The sharded steps against one device: explicit axes in the fast set;
    # auto axes there in test_properties.py (random shardings, the stacked
    # layer axis) and test_bases_sharding.py.
    'tests/test_sharding.py::'
    'test_sharded_steps_keep_shardings_and_match_single_device': ('[auto]',),
    # The collectives: each form and each mode (explicit, auto axes) once in
    # the fast set across these tests.
    'tests/test_sharding.py::test_refresh_collectives_move_only_the_sample': (
        '[auto]',),
    'tests/test_sharding.py::'
    'test_sample_collectives_for_a_3d_param_sharded_on_its_leading_axis': (
        '[explicit]',),
    'tests/test_sharding.py::'
    'test_steps_without_refresh_communicate_as_the_base_optimizer': (
        '[momentum form-explicit]', '[momentum form-auto]',
        '[chain link-auto]'),
    'tests/test_sharding.py::'
    'test_loop_decided_steps_communicate_as_adam_or_move_the_sample': (
        '[momentum form-explicit]', '[chain link-explicit]',
        '[chain link-auto]'),
    'tests/test_sharding.py::'
    'test_stacked_layer_axis_sharded_plain_steps_communicate_as_adam': (
        '[momentum-explicit]', '[momentum-auto]', '[chain-auto]'),
    'tests/test_sharding.py::test_step_without_out_shardings_compiles_once': (
        '[explicit-momentum]', '[auto-chain]'),
    # The layer axis sharded on 'data' in the fast set (FAST below); also
    # on 'model': slow.
    'tests/test_sharding.py::test_stacked_layers_sharded_on_the_layer_axis': (
        "-P('data', 'model', None)]",),
    # The NumPy reference: each K path (select chain, K = 4; past the
    # unroll, K = 12), statistic and global statistic once in the fast set.
    'tests/test_transform.py::test_matches_numpy_reference_over_three_refreshes':
        ('[3-signed-layer_mean]', '[2-abs-layer_mean]'),
    # Bitwise identity before the first refresh: the chain link and
    # adamw_sgg (the momentum form) in the fast set; with_sgg alone here.
    'tests/test_transform.py::test_identity_before_first_refresh_bitwise': (
        '[<lambda>1]',),
    # K = 12 (past the unroll) in the fast set; K = 3 is the select chain
    # every other test compiles.
    'tests/test_transform.py::test_stacked_layers_equal_separate_layers': (
        '[3]',),
    # K = 1 and K = 255 in the fast set; T = 1 and beta3 = 0 are checked by
    # test_properties' draws (T in [1, 50], beta3 in [0, 1)).
    'tests/test_transform.py::test_boundary_arguments_are_accepted': (
        '[recluster_interval=1]', '[beta3=0.0]'),
    # A checkpoint from 0.1: upgraded (and a state of another model
    # refused) in the fast set; refused by a 0.2 target here.
    'tests/test_upgrade.py::test_a_0_1_checkpoint_is_refused_by_a_0_2_target':
        None,
    # bfloat16 in the fast set (float32 is every other test's dtype);
    # float16 and float64 here.
    'tests/test_optax_compat.py::test_state_types_stable_and_update_dtype_kept':
        ('[float32]', '[float16]', '[float64]'),
    # Each problem and each base once in the fast set.
    'tests/test_optax_compat.py::test_converges_after_adam_and_sgd': (
        '[_quadratic-<lambda>', '[_rosenbrock-scale_by_adam'),
    # Donation: the sharded steps donate (test_sharding.py).
    'tests/test_optax_compat.py::test_donated_step_runs': None,
    # with_sgg in the fast set; adamw_sgg and lamb_sgg wrap the same code.
    'tests/test_defects.py::test_a_parameter_named_like_the_moment_field': (
        '[<lambda>1]', '[<lambda>2]'),
    # float64 in the fast set; bfloat16 here.
    'tests/test_defects.py::test_injected_hyperparameters_keep_state_float32':
        ('[bfloat16-None]', '[bfloat16-float32]'),
    # The reference rule at K = 1 in the fast set; the collapsed centres
    # here. optax.masked in the fast set; optax.partition here (and in
    # test_optax_compat.py).
    'tests/test_defects.py::test_reference_rule_ema_is_not_restarted': (
        '[3-',),
    'tests/test_defects.py::'
    'test_base_under_masked_or_partition_groups_what_has_a_momentum': (
        '[partition]',),
    # with_sgg and the chain link in the fast set ([chain-frozen] above);
    # inject_hyperparams with the dynamic assignment here.
    'tests/test_host_refresh.py::test_plain_step_holds_no_conditional': (
        '[inject_hyperparams]',),
    'tests/test_host_refresh.py::'
    'test_loop_decided_refresh_gives_the_default_results': (
        '[inject_hyperparams-dynamic]',),
    # MultiSteps: test_optax_compat.py (the own schedule under MultiSteps);
    # a NumPy bool decides as a bool does (the refusals are checked fast).
    'tests/test_host_refresh.py::test_multi_steps_passes_the_decision_on':
        None,
    'tests/test_host_refresh.py::test_numpy_bool_is_accepted': None,
    # Small, stacked and odd shapes in the fast set; the largest here.
    'tests/test_sampling.py::test_sample_layout_and_strata': (
        '[shape2-False]', '[shape3-False]'),
    # The row-blocked layer (the one a banded sample got wrong) in the fast
    # set; the column-blocked one here (64 refreshes of a 4M-element layer).
    'tests/test_sampling.py::'
    'test_model_wide_deviation_is_precise_at_every_refresh': ('[cols]',),
    # Each form and each assignment once in the fast set.
    'tests/test_memory.py::test_momentum_form_holds_no_update_sized_temporary':
        ('[momentum form-dynamic]', '[adamw_sgg-frozen]',
         '[momentum form-frozen]'),
    'tests/test_memory.py::test_chain_link_holds_one_update_at_most': (
        '[dynamic]',),
    # adamw_sgg (the program test_cluster_summary_of_nested_state compiles
    # too) and adafactor_sgg in the fast set; lamb_sgg here.
    'tests/test_aliases_diagnostics.py::test_alias_trains_and_rescales': (
        '[<lambda>1]',),
    # Equal to the base before the first refresh: lamb_sgg and
    # adafactor_sgg in the fast set, adamw_sgg there in
    # test_transform.py::test_identity_before_first_refresh_bitwise.
    'tests/test_aliases_diagnostics.py::'
    'test_alias_equals_its_base_before_first_refresh': (
        '<lambda>0]', '<lambda>1]'),
    # --- the experiments: their pieces in the fast set, end to end here ---
    # Resuming: test_checkpointing.py and test_resume.py's settings test.
    'tests/experiments/test_resume.py::'
    'test_sigkill_during_a_save_resumes_bitwise': None,
    # The loop-decided refresh and its step without a conditional:
    # test_host_refresh.py (the library); the loop's logging in
    # test_train_loop.py.
    'tests/experiments/test_train_loop.py::'
    'test_loop_decided_refresh_trains_as_sgg_own_schedule': None,
    'tests/experiments/test_train_loop.py::'
    'test_the_train_step_holds_no_conditional': None,
    'tests/experiments/test_train_loop.py::'
    'test_refresh_step_compile_is_left_out_of_the_throughput': None,
    # The SmolLM2 file's metadata and tokenizer (the reader opens the 94 MB
    # file): with its weights, slow; the GGUF helpers in the fast set.
    'tests/experiments/test_gguf.py::test_config_from_metadata': None,
    'tests/experiments/test_gguf.py::test_tokenizer_round_trip': None,
    # A recorded run re-run: the comparison rules in the fast set.
    'tests/experiments/test_reproduce.py::'
    'test_a_recorded_run_reproduces_bitwise_here': None,
    'tests/experiments/test_reproduce.py::'
    'test_a_changed_metric_does_not_reproduce': None,
    'tests/experiments/test_reproduce.py::'
    'test_a_run_from_another_cpu_is_checked_within_tolerance': None,
    # The pod-scale programs (one module fixture compiles them): the
    # collective parser and the docs table in the fast set, the library's
    # collectives on 8 devices in test_sharding.py.
    'tests/experiments/test_podscale.py::'
    'test_memory_is_adams_plus_the_ids_floor': None,
    'tests/experiments/test_podscale.py::'
    'test_the_plain_step_communicates_as_adam': None,
    'tests/experiments/test_podscale.py::'
    'test_the_refresh_step_adds_only_small_collectives': None,
    'tests/experiments/test_podscale.py::'
    'test_a_parameter_sized_gather_is_seen': None,
    'tests/experiments/test_podscale.py::'
    'test_the_record_is_the_compiled_programs': None,
    # Training the low-rank rows and ReLoRA's restarts: their other pieces
    # (spectral init, the jagged schedule, GaLore's kernels, the rank
    # checks) in the fast set.
    'tests/experiments/test_optim_rows.py::test_row_trains_or_says_why_not':
        None,
    'tests/experiments/test_optim_rows.py::'
    'test_restart_merges_reinitialises_and_prunes': None,
    # The demo end to end: its held-out split in the fast set.
    'tests/experiments/test_demo.py::'
    'test_demo_reports_held_out_loss_and_moved_scales': None,
    # One real command in the fast set; the other flags' messages are
    # checked in process there.
    'tests/experiments/test_cli_errors.py::'
    'test_the_real_command_exits_2_without_a_traceback': (
        '[argv1', '[argv2', '[argv3', '[argv4', '[argv5'),
    # LoRA: without quantization in the fast set; SGG on LoRA factors there
    # in test_sgg_state_exists_only_for_lora_factors.
    'tests/experiments/test_lora.py::test_training_leaves_base_bitwise_unchanged':
        ('[True-True]',),
    'tests/experiments/test_lora.py::test_adapted_model_equals_base_at_init': (
        '[True-all]',),
    'tests/experiments/test_lora.py::'
    'test_only_lora_params_get_gradients_and_state': ('[True]',),
    'tests/experiments/test_lora.py::'
    'test_lora_only_partition_matches_nnx_optimizer': None,
    # The smallest preset's count in the fast set; the forward pass, loss
    # and sharding specs there.
    'tests/experiments/test_model.py::test_param_count_matches_formula': (
        '[7b]', '[350m]', '[1b]'),
    'tests/experiments/test_model.py::test_adam_step_reduces_loss': None,
    'tests/experiments/test_model.py::'
    'test_sharded_creation_on_a_one_device_mesh': None,
}

# Tests of which only these cases run in the fast set, the rest (and any
# case added later) in the slow one.
FAST = {
    'tests/test_sharding.py::test_stacked_layers_sharded_on_the_layer_axis': (
        "[chain-select_chain-frozen-P('data', None, None)]",),
    # The how-to scripts: the NNX, Linen and LoRA ones; the features of the
    # others are tested in the fast set (test_sharding.py,
    # test_checkpoint.py, test_host_refresh.py, test_refresh_program.py,
    # test_offload.py, test_bases.py, test_aliases_diagnostics.py,
    # test_transform.py).
    'tests/test_docs.py::test_snippet_runs_and_prints_the_documented_output': (
        '[nnx_optimizer]', '[linen_trainstate]', '[lora]'),
}


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(config, items):
  del config
  for item in items:
    name, _, params = item.nodeid.partition('[')
    params = '[' + params
    cases = SLOW.get(name, ())
    if (cases is None or any(case in params for case in cases)
        or (name in FAST and params not in FAST[name])):
      item.add_marker(pytest.mark.slow)
