"""Program synthesis: write a Python function `f` from a plain-words spec; hidden tests verify it.

A problem chains `difficulty` steps drawn from small spec families with random constants (e.g.
'multiply x by 3' then 'add 2 to it'); each step's output type is the next one's input type. The
prompt is the spec as a comment plus the signature, so a completion may be just the body:
  # Write f(x): multiply x by 3, then add 2 to it.
  def f(x):
The reference answer is a complete `def f(...)` that we generate along with the spec.

Hidden tests. `Problem` holds only prompt, answer and difficulty, so the tests are derived from
the prompt alone: `hidden_tests` parses the spec back into its steps (the prompt is a canonical
encoding of them), draws inputs from a seed hashed from the prompt, and computes the expected
outputs with plain Python functions of the step constants. The reference answer is never executed
in-process, and the expected outputs never enter the sandbox: the child only runs `f` on the
inputs and prints what it returned (int, str or list of int, exact types), and this process
compares. So a program cannot pass by reading or patching the tests (an object whose `__eq__` is
always True, `exit(0)` before the asserts, inspecting frames): it has to print the right values.
A mismatch is reported as an `AssertionError` line in the result's stderr, like a failed assert.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import string
from collections.abc import Callable
from typing import Any

import numpy as np

from si_jax.tasks import sandbox
from si_jax.tasks.base import Problem, Task

LIMITS = sandbox.SandboxLimits(wall_time_s=2.0, cpu_time_s=2, memory_mb=256)
_MAX_CODE_CHARS = 8192  # Longer completions are junk: never run.
_NUM_TESTS = 12
_RESULT_MARKER = '__si_jax_results__ '
_ARG = {'int': 'x', 'list': 'xs', 'str': 's'}  # The argument's name by input type.
_LETTERS = 'abcde'  # Strings in tests are drawn from these: character constants matter.

# Constant placeholders: how each is drawn, and the regex that reads it back from the spec.
_PARAMS = {
    'a': (lambda rng: int(rng.integers(2, 10)), r'(\d+)'),
    'k': (lambda rng: int(rng.integers(0, 7)), r'(\d+)'),
    'c': (lambda rng: str(rng.choice(list(_LETTERS))), r'([a-e])'),
    'd': (lambda rng: str(rng.choice(list('xyz'))), r'([xyz])'),
}


@dataclasses.dataclass(frozen=True)
class _Family:
  """One step: `spec` in words and `code` as an expression of {v}, both with constants."""
  in_type: str
  out_type: str
  spec: str
  code: str
  fn: Callable[..., Any]  # fn(value, **constants) -> the expected output.

  @property
  def params(self) -> tuple[str, ...]:
    return tuple(p for p in _PARAMS if '{' + p + '}' in self.spec)

  def pattern(self, subject: str) -> re.Pattern:
    text = re.escape(self.spec).replace(r'\{', '{').replace(r'\}', '}')
    return re.compile(text.format(v=re.escape(subject), **{p: _PARAMS[p][1] for p in _PARAMS}))


_FAMILIES = (
    _Family('int', 'int', 'add {a} to {v}', '{v} + {a}', lambda v, a: v + a),
    _Family('int', 'int', 'subtract {a} from {v}', '{v} - {a}', lambda v, a: v - a),
    _Family('int', 'int', 'multiply {v} by {a}', '{v} * {a}', lambda v, a: v * a),
    _Family('int', 'int', 'take {v} modulo {a}', '{v} % {a}', lambda v, a: v % a),
    _Family('int', 'int', 'floor-divide {v} by {a}', '{v} // {a}', lambda v, a: v // a),
    _Family('int', 'int', 'square {v}', '{v} * {v}', lambda v: v * v),
    _Family('int', 'int', 'take the absolute value of {v}', 'abs({v})', abs),
    _Family('int', 'str', 'convert {v} to a decimal string', 'str({v})', str),
    _Family('int', 'list', 'list the decimal digits of {v}', '[int(ch) for ch in str(abs({v}))]',
            lambda v: [int(ch) for ch in str(abs(v))]),
    _Family('list', 'list', 'keep the elements of {v} greater than {k}',
            '[e for e in {v} if e > {k}]', lambda v, k: [e for e in v if e > k]),
    _Family('list', 'list', 'sort {v} in descending order', 'sorted({v}, reverse=True)',
            lambda v: sorted(v, reverse=True)),
    _Family('list', 'list', 'sort {v} in ascending order', 'sorted({v})', sorted),
    _Family('list', 'list', 'reverse {v}', '{v}[::-1]', lambda v: v[::-1]),
    _Family('list', 'list', 'add {a} to every element of {v}', '[e + {a} for e in {v}]',
            lambda v, a: [e + a for e in v]),
    _Family('list', 'list', 'multiply every element of {v} by {a}', '[e * {a} for e in {v}]',
            lambda v, a: [e * a for e in v]),
    _Family('list', 'int', 'sum the elements of {v}', 'sum({v})', sum),
    _Family('list', 'int', 'take the length of {v}', 'len({v})', len),
    _Family('list', 'int', 'take the largest element of {v} (0 if empty)', 'max({v}, default=0)',
            lambda v: max(v, default=0)),
    _Family('list', 'int', 'count the elements of {v} equal to {k}', '{v}.count({k})',
            lambda v, k: v.count(k)),
    _Family('str', 'str', 'reverse {v}', '{v}[::-1]', lambda v: v[::-1]),
    _Family('str', 'str', 'convert {v} to upper case', '{v}.upper()', str.upper),
    _Family('str', 'str', "remove every '{c}' from {v}", "{v}.replace('{c}', '')",
            lambda v, c: v.replace(c, '')),
    _Family('str', 'str', "replace every '{c}' in {v} with '{d}'", "{v}.replace('{c}', '{d}')",
            lambda v, c, d: v.replace(c, d)),
    _Family('str', 'int', "count the occurrences of '{c}' in {v}", "{v}.count('{c}')",
            lambda v, c: v.count(c)),
    _Family('str', 'int', 'take the length of {v}', 'len({v})', len),
    _Family('str', 'list', 'list the character codes of {v}', '[ord(ch) for ch in {v}]',
            lambda v: [ord(ch) for ch in v]),
)
_STEP_SEP = ', then '
_PROMPT_RE = re.compile(r'# Write f\((x|xs|s)\): (.+)\.\ndef f\(\1\):\n', re.DOTALL)
_DEF_F_RE = re.compile(r'^def f\(', re.MULTILINE)
_FENCE_RE = re.compile(r'```[ \t]*(?:python|py)?[ \t]*\n(.*?)(?:```|\Z)', re.DOTALL)

# Appended to the program: prints what f returned on each input (a repr where not exactly an
# int, str or list of int: bool, float, None, subclasses and odd objects never compare equal).
_HARNESS = '''
import json as _json
def _exact(v):
  if type(v) in (int, str) or type(v) is list and all(type(e) is int for e in v):
    return v
  return {{'repr': repr(v)[:200], 'type': type(v).__name__}}
_inputs = {inputs!r}
print({marker!r} + _json.dumps([_exact(f(_arg)) for _arg in _inputs]))
'''


def _steps(problem: Problem) -> tuple[str, list[tuple[_Family, dict[str, Any]]]]:
  """(input type, [(family, constants)]) read back from the prompt; ValueError if foreign."""
  match = _PROMPT_RE.fullmatch(problem.prompt)
  if not match:
    raise ValueError(f'not a code-task prompt: {problem.prompt[:80]!r}')
  in_type = next(t for t, a in _ARG.items() if a == match.group(1))
  steps, current = [], in_type
  for i, phrase in enumerate(match.group(2).split(_STEP_SEP)):
    subject = match.group(1) if i == 0 else 'it'
    for family in _FAMILIES:
      found = family.in_type == current and family.pattern(subject).fullmatch(phrase)
      if found:
        values = [int(g) if g.isdigit() else g for g in found.groups()]
        steps.append((family, dict(zip(family.params, values))))
        current = family.out_type
        break
    else:
      raise ValueError(f'unknown step {phrase!r} for a value of type {current}')
  return in_type, steps


def _inputs(in_type: str, rng: np.random.Generator) -> list[Any]:
  """Edge cases plus random values. The fixed ones tell every constant from the next one (e.g.
  x // 8 from x // 9: -50), so a near miss never passes by luck."""
  if in_type == 'int':
    fixed = [0, 1, -1, 7, -13, 37, -50]
    return fixed + [int(v) for v in rng.integers(-50, 51, _NUM_TESTS - len(fixed))]
  if in_type == 'list':
    rand = [[int(v) for v in rng.integers(-3, 10, rng.integers(1, 8))]
            for _ in range(_NUM_TESTS - 2)]
    return [[], [int(v) for v in rng.permutation(10)]] + rand
  letters = list(_LETTERS + 'xyz')
  rand = [''.join(rng.choice(letters, rng.integers(1, 9))) for _ in range(_NUM_TESTS - 2)]
  return ['', ''.join(rng.permutation(list(_LETTERS * 2)))] + rand


def hidden_tests(problem: Problem) -> list[tuple[Any, Any]]:
  """[(input, expected output)]: the same for a prompt in any process (seeded by its hash)."""
  in_type, steps = _steps(problem)
  seed = int.from_bytes(hashlib.sha256(problem.prompt.encode()).digest()[:8], 'little')
  cases = []
  for arg in _inputs(in_type, np.random.default_rng(seed)):
    value = arg
    for family, constants in steps:
      value = family.fn(value, **constants)
    cases.append((arg, value))
  return cases


def _mismatch(cases: list[tuple[Any, Any]], stdout: str) -> str | None:
  """Why the printed outputs fail the tests, worded like a failed assert; None if they pass."""
  try:
    line = [l for l in stdout.splitlines() if l.startswith(_RESULT_MARKER)][-1]
    outputs = json.loads(line[len(_RESULT_MARKER):])
  except Exception:  # pylint: disable=broad-except  # No line (an early exit), or a forged one.
    outputs = None
  if not isinstance(outputs, list) or len(outputs) != len(cases):
    return 'The program exited before the tests finished.'
  for (arg, want), got in zip(cases, outputs):
    try:
      if json.dumps(got) == json.dumps(want):  # Exact: 1.0 or True is not 1.
        continue
      shown = f"{got.get('repr')} (a {got.get('type')})" if isinstance(got, dict) else repr(got)
    except Exception:  # pylint: disable=broad-except  # Forged, deeply nested output.
      shown = 'an unreadable value'
    return f'AssertionError: f({arg!r}) returned {shown:.200}, expected {want!r}'
  return None


@dataclasses.dataclass
class CodeTask(Task):
  """Write `f` from a spec of `difficulty` chained steps; reward 1 iff every hidden test passes."""
  name = 'code'
  difficulties = (1, 2, 3)
  limits: sandbox.SandboxLimits = LIMITS

  def make_problem(self, rng: np.random.Generator, difficulty: int) -> Problem:
    current = str(rng.choice(list(_ARG)))
    arg = _ARG[current]
    phrases, lines, previous = [], [], None
    for i in range(difficulty):
      options = [f for f in _FAMILIES if f.in_type == current and f is not previous]
      family = options[int(rng.integers(len(options)))]
      constants = {p: _PARAMS[p][0](rng) for p in family.params}
      phrases.append(family.spec.format(v=arg if i == 0 else 'it', **constants))
      lines.append(f'  r = {family.code.format(v=arg if i == 0 else "r", **constants)}\n')
      current, previous = family.out_type, family
    signature = f'def f({arg}):\n'
    prompt = f'# Write f({arg}): {_STEP_SEP.join(phrases)}.\n{signature}'
    return Problem(prompt=prompt, answer=signature + ''.join(lines) + '  return r\n',
                   difficulty=difficulty)

  def alphabet(self) -> str:
    return string.ascii_letters + string.digits + string.punctuation + ' \n'

  def signature(self, problem: Problem) -> str:
    """The prompt's last line, `def f(...):\\n`: what a retry continues from."""
    return problem.prompt.rstrip('\n').rsplit('\n', 1)[-1] + '\n'

  def extract_answer(self, completion: str) -> str | None:
    """The code of a completion: the first ```python fence if any, else all of it.

    Leading indentation is kept: a completion may be just the body that continues the prompt.
    """
    if not isinstance(completion, str) or len(completion) > _MAX_CODE_CHARS:
      return None
    fenced = _FENCE_RE.search(completion)
    code = fenced.group(1) if fenced else completion
    if not code.strip() or '\x00' in code:
      return None
    return code.rstrip() + '\n'

  def program(self, problem: Problem, completion: str) -> str | None:
    """The code to run: the completion, prefixed with the prompt unless it defines `f` itself."""
    code = self.extract_answer(completion)
    if code is None:
      return None
    return code if _DEF_F_RE.search(code) else problem.prompt + code

  def run_hidden_tests(self, problem: Problem,
                       completion: str) -> tuple[float, sandbox.ExecResult]:
    """(reward, sandbox result); a wrong output comes back as status 'error' with an
    `AssertionError` line in stderr. Raises ValueError only for a problem not of this task."""
    cases = hidden_tests(problem)
    program = self.program(problem, completion)
    if program is None:
      return 0.0, sandbox.ExecResult('error', None, '', 'No code found in the completion.', 0.0)
    harness = _HARNESS.format(marker=_RESULT_MARKER, inputs=[arg for arg, _ in cases])
    result = sandbox.run_python(program + harness, limits=self.limits)
    if result.status != 'ok':
      return 0.0, result
    error = _mismatch(cases, result.stdout)
    if error:
      return 0.0, dataclasses.replace(result, status='error', stderr=error)
    return 1.0, result

  def verify(self, problem: Problem, completion: str) -> float:
    """1.0 iff every hidden test passes in the sandbox. Raises only when the sandbox cannot
    isolate (a silent 0 would look like a model that never codes right)."""
    try:
      return self.run_hidden_tests(problem, completion)[0]
    except sandbox.SandboxUnavailable:
      raise
    except Exception:  # pylint: disable=broad-except
      return 0.0
