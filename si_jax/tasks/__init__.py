"""Verifiable task environments (survey §2.3): problems, prompts, verifiers."""
from si_jax.tasks.base import Problem, Task
from si_jax.tasks.strings import StringTask

_TASKS = {'reverse': lambda **kw: StringTask(reverse=True, **kw),
          'copy': lambda **kw: StringTask(reverse=False, **kw)}


def get_task(name: str, **kwargs) -> Task:
  if name not in _TASKS:
    raise ValueError(f'config.task.name={name!r} is not one of {sorted(_TASKS)}')
  return _TASKS[name](**kwargs)
