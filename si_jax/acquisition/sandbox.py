"""Best-effort sandbox for running model-written Python code.

Used to verify synthesized programs (unit tests, environment feedback). It is a research sandbox,
NOT a security boundary against adversarial code: it combines a fresh process group (killed as a
whole on timeout), rlimits (CPU, address space, processes, file size, no core dumps), a private
network namespace where the kernel allows it, and an audit hook in the child that refuses network
connections, process creation beyond a budget and writes outside the scratch directory. Code
that uses ctypes, or execs a non-Python program, can get around the audit hook.
"""

import dataclasses
import math
import os
import signal
import subprocess
import sys
import tempfile
import time

# Runs in the child before the user code. Audit hooks cannot be removed once added, so this holds
# for all Python code in the process (and in forked children, which inherit it).
#
# The child sets its own rlimits and network namespace here rather than in a `preexec_fn`: running
# Python between fork and exec in a multithreaded parent (JAX is) can deadlock.
_PRELUDE = r'''
import ctypes, os, resource, sys
_ROOT = os.path.realpath(sys.argv[1])
_FORKS = [int(sys.argv[2])]  # Inherited on fork: a process tree holds at most 2**budget processes.
_CPU_S, _MEMORY, _NPROC, _FSIZE = map(int, sys.argv[3:7])

def _limit(res, soft, hard=None):
  hard = soft if hard is None else hard
  current_hard = resource.getrlimit(res)[1]
  if current_hard != resource.RLIM_INFINITY:  # Never above the hard limit (needs privileges).
    soft, hard = min(soft, current_hard), min(hard, current_hard)
  resource.setrlimit(res, (soft, hard))

_limit(resource.RLIMIT_CPU, _CPU_S, _CPU_S + 1)  # SIGXCPU first, then SIGKILL.
_limit(resource.RLIMIT_AS, _MEMORY)
_limit(resource.RLIMIT_NPROC, _NPROC)  # Not enforced for root: the fork budget below is.
_limit(resource.RLIMIT_FSIZE, _FSIZE)
_limit(resource.RLIMIT_CORE, 0)
try:  # An empty network namespace where the kernel allows it (needs CAP_SYS_ADMIN).
  if hasattr(os, 'unshare'):
    os.unshare(os.CLONE_NEWNET)
  else:
    ctypes.CDLL(None).unshare(0x40000000)  # CLONE_NEWNET; -1 on failure is ignored.
except (OSError, AttributeError):
  pass  # The audit hook still refuses connections from Python code.
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_PATH_EVENTS = {'os.remove': 1, 'os.rmdir': 1, 'os.mkdir': 1, 'shutil.rmtree': 1,
                'os.truncate': 1, 'os.chmod': 1, 'os.chown': 1, 'os.utime': 1,
                'os.rename': 2, 'os.link': 2, 'os.symlink': 2}
_NETWORK_EVENTS = {'socket.connect', 'socket.bind', 'socket.sendto', 'socket.sendmsg'}
_SPAWN_EVENTS = {'os.fork', 'os.forkpty', 'os.posix_spawn', 'os.system', 'subprocess.Popen'}

def _inside(path):
  if isinstance(path, int):
    return True  # An already-open descriptor was checked when it was opened.
  real = os.path.realpath(os.fsdecode(path))
  return real == os.devnull or real == _ROOT or real.startswith(_ROOT + os.sep)

def _hook(event, args):
  if event == 'open':
    path, mode, flags = args
    writing = any(c in mode for c in 'wax+') if mode else bool((flags or 0) & _WRITE_FLAGS)
    if writing and path is not None and not _inside(path):
      raise PermissionError(f'sandbox: write outside the sandbox refused: {path!r}')
  elif event in _PATH_EVENTS:
    for path in args[:_PATH_EVENTS[event]]:
      if not _inside(path):
        raise PermissionError(f'sandbox: {event} outside the sandbox refused: {path!r}')
  elif event in _NETWORK_EVENTS:
    raise PermissionError(f'sandbox: network access refused ({event})')
  elif event in _SPAWN_EVENTS:
    if _FORKS[0] <= 0:
      raise PermissionError(f'sandbox: process budget exhausted ({event})')
    _FORKS[0] -= 1

os.chdir(_ROOT)
with open('main.py', encoding='utf-8') as _f:
  _code = compile(_f.read(), 'main.py', 'exec')
sys.argv = ['main.py']
sys.addaudithook(_hook)
del _f, _hook
exec(_code, {'__name__': '__main__', '__builtins__': __builtins__})
'''


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
  """Resource limits for one execution."""
  wall_time_s: float = 5.0
  cpu_time_s: int = 5
  memory_mb: int = 512
  max_processes: int = 16
  max_output_bytes: int = 64_000
  max_file_bytes: int = 10_000_000


@dataclasses.dataclass(frozen=True)
class ExecResult:
  """Outcome of one execution; stdout/stderr are capped at max_output_bytes."""
  status: str  # 'ok', 'error', 'timeout', 'out_of_memory' or 'killed'.
  returncode: int | None
  stdout: str
  stderr: str
  wall_time_s: float


def _read_capped(path: str, cap: int) -> tuple[str, str]:
  """Returns (the first `cap` bytes, the last 4 KB) of a file, decoded; never reads it all."""
  with open(path, 'rb') as f:
    head = f.read(cap)
    f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
    tail = f.read()
  decode = lambda b: b.decode('utf-8', errors='replace')
  return decode(head), decode(tail)


def _kill_group(pgid: int) -> None:
  try:
    os.killpg(pgid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass


def _status(returncode: int, stderr_tail: str) -> str:
  if returncode == 0:
    return 'ok'
  if 'MemoryError' in stderr_tail:
    return 'out_of_memory'
  if returncode == -signal.SIGXCPU:
    return 'timeout'  # CPU time limit.
  return 'killed' if returncode < 0 else 'error'


def run_python(code: str, stdin: str = '',
               limits: SandboxLimits = SandboxLimits()) -> ExecResult:
  """Runs `code` as a Python program in a fresh process under `limits`."""
  fork_budget = max(0, int(math.log2(max(1, limits.max_processes))))
  with tempfile.TemporaryDirectory(prefix='sandbox_') as tmp:
    root = os.path.join(tmp, 'work')  # The only writable place; outputs live beside it.
    os.mkdir(root)
    with open(os.path.join(root, 'main.py'), 'w', encoding='utf-8') as f:
      f.write(code)
    out_path, err_path = os.path.join(tmp, 'stdout'), os.path.join(tmp, 'stderr')
    env = {'PATH': '/usr/bin:/bin', 'LANG': 'C.UTF-8', 'HOME': root, 'TMPDIR': root}
    start = time.monotonic()
    with open(out_path, 'wb') as out, open(err_path, 'wb') as err:
      proc = subprocess.Popen(
          [sys.executable, '-I', '-c', _PRELUDE, root, str(fork_budget),
           str(limits.cpu_time_s), str(limits.memory_mb * 2**20), str(limits.max_processes),
           str(limits.max_file_bytes)],
          stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=root, env=env,
          start_new_session=True)
      timed_out = False
      try:
        proc.communicate(stdin.encode('utf-8'), timeout=limits.wall_time_s)
      except subprocess.TimeoutExpired:
        timed_out = True
      finally:
        _kill_group(proc.pid)  # Also reaps stragglers the program left behind.
        proc.wait()
    wall_time_s = time.monotonic() - start
    stdout, _ = _read_capped(out_path, limits.max_output_bytes)
    stderr, stderr_tail = _read_capped(err_path, limits.max_output_bytes)
  status = 'timeout' if timed_out else _status(proc.returncode, stderr_tail)
  return ExecResult(status, proc.returncode, stdout, stderr, wall_time_s)


def run_tests(code: str, tests: str,
              limits: SandboxLimits = SandboxLimits()) -> tuple[float, ExecResult]:
  """Runs `code` followed by `assert` lines; reward 1.0 iff everything ran without error."""
  result = run_python(code + '\n' + tests, limits=limits)
  return (1.0 if result.status == 'ok' else 0.0), result
