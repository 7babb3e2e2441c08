"""Verifiable task environments (survey §2.3): problems, prompts, verifiers."""
from si_jax.tasks.arithmetic import AdditionTask, MultiplicationTask
from si_jax.tasks.base import Problem, Task
from si_jax.tasks.code import CodeTask
from si_jax.tasks.countdown import CountdownTask
from si_jax.tasks.strings import StringTask

_TASKS = {
    'reverse': lambda **kw: StringTask(reverse=True, **kw),
    'copy': lambda **kw: StringTask(reverse=False, **kw),
    'addition_reversed': lambda **kw: AdditionTask(reverse=True, **kw),
    'addition': lambda **kw: AdditionTask(reverse=False, **kw),
    'multiplication': lambda **kw: MultiplicationTask(cot=False, **kw),
    'multiplication_cot': lambda **kw: MultiplicationTask(cot=True, **kw),
    'countdown': CountdownTask,
    'code': CodeTask,
}


def get_task(name: str, **kwargs) -> Task:
  """A task by its config name (`config.task.name`), with its config fields as kwargs."""
  if name not in _TASKS:
    raise ValueError(f'config.task.name={name!r} is not one of {sorted(_TASKS)}')
  return _TASKS[name](**kwargs)
