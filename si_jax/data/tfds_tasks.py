"""A TFDS builder for the procedural task families, so they load like any TFDS dataset.

  builder = ProceduralTasks(config='addition_reversed', data_dir=..., file_format='array_record')
  builder.download_and_prepare()      # no download, no TensorFlow: problems come from the task
  source = tfds.data_source('procedural_tasks/addition_reversed', data_dir=...)['train']

Splits are fixed by their seeds and versioned; prompts are unique, and no test prompt is in train.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from si_jax import tasks

_SPLIT_SEEDS = {'train': 0, 'test': 1}


@dataclasses.dataclass
class TaskConfig(tfds.core.BuilderConfig):
  task_name: str = ''
  train_per_difficulty: int = 2000
  test_per_difficulty: int = 200


def _config(task_name: str) -> TaskConfig:
  return TaskConfig(name=task_name, task_name=task_name,
                    description=f'Procedurally generated {task_name} problems.')


class ProceduralTasks(tfds.core.GeneratorBasedBuilder):
  """Problems of one si_jax task per config, split by seed, stratified by difficulty."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [_config(name) for name in (
      'reverse', 'copy', 'addition_reversed', 'addition', 'multiplication',
      'multiplication_cot', 'countdown')]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'prompt': tfds.features.Text(),
            'answer': tfds.features.Text(),
            'difficulty': np.int32,
        }),
        supervised_keys=('prompt', 'answer'))

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    task = tasks.get_task(self.builder_config.task_name)
    train = self._problems(task, 'train', self.builder_config.train_per_difficulty)
    train_prompts = {p.prompt for p in train}
    test = [p for p in self._problems(task, 'test', self.builder_config.test_per_difficulty)
            if p.prompt not in train_prompts]
    return {'train': self._generate_examples(train), 'test': self._generate_examples(test)}

  @staticmethod
  def _problems(task: tasks.Task, split: str, per_difficulty: int) -> list[tasks.Problem]:
    """Up to per_difficulty distinct problems per level (easy levels may have fewer)."""
    unique = {}
    for d in task.difficulties:
      for p in task.generate(seed=_SPLIT_SEEDS[split], n=per_difficulty, difficulty=d):
        unique.setdefault(p.prompt, p)
    return list(unique.values())

  def _generate_examples(self, problems):
    for i, p in enumerate(problems):
      yield i, {'prompt': p.prompt, 'answer': p.answer, 'difficulty': p.difficulty}
