"""One name for one thing on the command lines, and SGG that acts by default.

The optimizers are named by SGG's form (`*_sgg_update`, `*_sgg_momentum`);
K, T and beta3 are `--num-clusters`, `--recluster-interval` (or
`--recluster-interval-frac`) and `--beta3` in train, pretrain and finetune.
Earlier spellings still work, mean what they meant, and print one warning
line naming the new one. Nothing trains here: `train`'s loop is replaced.
"""

import pytest

from experiments.common import model_config
from experiments.finetuning import cli as finetune_cli
from experiments.pretraining import (
  config,
  optim,
  pretrain_cli,
  runner,
  train_cli,
)


@pytest.fixture
def trained(monkeypatch, tmp_path):
  """Runs `python -m experiments.train` with a loop that only records the
  configuration and the output path."""
  seen = {}

  def fake_train(cfg, out, **kwargs):
    del kwargs
    seen.update(cfg=cfg, out=out)
    sgg = [{'max_abs_dev': 0.25}] if '_sgg' in cfg.optimizer else []
    return {'test_ppl': 1.0, 'dev_loss': 0.0, 'tokens_per_s': 1.0,
            'wall_time_s': 0.0, 'curves': {'sgg': sgg}}

  monkeypatch.setattr(train_cli, 'train', fake_train)
  monkeypatch.chdir(tmp_path)

  def run(*argv):
    train_cli.main(['--no-progress', *argv])
    return seen['cfg'], seen['out']
  return run


def _warnings(err: str) -> list[str]:
  return [line for line in err.splitlines() if ': warning: ' in line]


def test_a_deprecated_optimizer_name_warns_and_keeps_its_meaning(trained,
                                                                 capsys):
  cfg, _ = trained('--optimizer', 'adam_sgg', '--steps', '40')
  (line,) = _warnings(capsys.readouterr().err)
  assert line == ("python -m experiments.train: warning: 'adam_sgg' is "
                  'deprecated: use adam_sgg_update (the same optimizer)')
  assert cfg.optimizer == 'adam_sgg_update'
  # Run JSONs that recorded the old name build the same optimizer.
  assert optim.build_optimizer(config.TrainConfig(optimizer='adam_sgg')) is (
      optim.build_optimizer(config.TrainConfig(optimizer='adam_sgg_update')))
  assert config.LABELS['adam_sgg'] == 'Adam+SGG (update)'


def test_sgg_refreshes_within_the_default_run(trained, capsys):
  cfg, out = trained('--optimizer', 'adam_sgg_momentum')
  printed = capsys.readouterr()
  assert not _warnings(printed.err)
  assert 'SGG max |S-1| 0.250 at the end' in printed.out
  assert cfg.recluster_interval == round(0.05 * cfg.steps) < cfg.steps
  assert cfg.beta3 == 0.9
  # The results file is named after the run, not shared by every run.
  assert out.as_posix() == (
      f'runs/train/tiny_adam_sgg_momentum_lr0.001_steps{cfg.steps}_s0.json')
  cfg, _ = trained('--optimizer', 'adam_sgg_update', '--steps', '50',
                   '--recluster-interval-frac', '0.2')
  assert cfg.recluster_interval == 10


def test_a_run_shorter_than_t_warns(trained, capsys):
  cfg, _ = trained('--optimizer', 'adam_sgg_update', '--steps', '20',
                   '--recluster-interval', '500')
  assert cfg.recluster_interval == 500
  (line,) = _warnings(capsys.readouterr().err)
  assert 'SGG never refreshes in this run' in line
  assert '--recluster-interval 500 >= --steps 20' in line
  trained('--optimizer', 'adam', '--steps', '20', '--recluster-interval',
          '500')
  assert not _warnings(capsys.readouterr().err)  # Adam has no T


def test_pretrain_spells_t_the_same_way(capsys):
  parser = pretrain_cli.build_parser()

  def settings(*argv):
    args = parser.parse_args(list(argv))
    return pretrain_cli._settings(parser, args, check=False)

  base, s = settings()
  assert s['t_frac'] == 0.05
  assert s['optimizers'] == list(config.MAIN_OPTIMIZERS)
  _, s = settings('--recluster-interval-frac', '0.1')
  assert s['t_frac'] == 0.1
  assert not capsys.readouterr().err
  _, s = settings('--t-frac', '0.1')
  assert s['t_frac'] == 0.1
  assert capsys.readouterr().err.strip() == (
      'python -m experiments.pretrain: warning: --t-frac is deprecated: use '
      '--recluster-interval-frac')
  base, s = settings('--recluster-interval', '7')
  assert (s['t_frac'], base.recluster_interval) == (0.0, 7)
  _, s = settings('--optimizers', 'adam,adafactor_sgg')
  assert s['optimizers'] == ['adam', 'adafactor_sgg_update']


def test_finetune_spells_k_t_beta3_the_same_way(capsys):
  parser = finetune_cli.parser()
  new = parser.parse_args(['--num-clusters', '2', '--recluster-interval',
                           '4,8', '--beta3', '0.5'])
  assert (new.sgg_k, new.sgg_intervals, new.sgg_beta3s) == (2, [4, 8], [0.5])
  assert not capsys.readouterr().err
  old = parser.parse_args(['--sgg-k', '2', '--sgg-interval-fracs', '0.2',
                           '--sgg-beta3s', '0.5'])
  assert (old.sgg_k, old.sgg_interval_fracs, old.sgg_beta3s) == (
      2, [0.2], [0.5])
  lines = _warnings(capsys.readouterr().err)
  assert lines == [
      f'python -m experiments.finetune: warning: {a} is deprecated: use {b}'
      for a, b in (('--sgg-k', '--num-clusters'),
                   ('--sgg-interval-fracs', '--recluster-interval-frac'),
                   ('--sgg-beta3s', '--beta3'))]


def test_stored_runs_find_a_run_recorded_under_the_old_name(tmp_path):
  """A committed folder's table rebuilds with the new names."""
  cfg = config.TrainConfig(optimizer='adam_sgg')
  (tmp_path / 'runs').mkdir()
  stored = runner.StoredRuns(tmp_path)
  stored._stored = [{'config': vars(cfg) | {}}]
  found = stored.run(cfg.replace(optimizer='adam_sgg_update'))
  assert found['config']['optimizer'] == 'adam_sgg'
  with pytest.raises(LookupError):
    stored.run(cfg.replace(optimizer='adam_sgg_momentum'))
  # A command line that still says adam_sgg finds a run of the new name.
  stored._stored = [{'config': vars(cfg) | {'optimizer': 'adam_sgg_update'}}]
  assert stored.run(cfg)['config']['optimizer'] == 'adam_sgg_update'


def test_train_help_lists_every_preset():
  """--preset's choices are every preset, and its help names none of them
  by hand (a hand-kept list fell behind once)."""
  (action,) = [a for a in train_cli.build_parser()._actions
               if '--preset' in a.option_strings]
  assert tuple(action.choices) == tuple(model_config.PRESETS)
  assert not [p for p in model_config.PRESETS if f"'{p}'" in action.help]
