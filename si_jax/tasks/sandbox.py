"""The sandbox for model-written Python code: namespaces (bubblewrap), rlimits, a kill switch.

Used to verify synthesized programs and to run environment actions. Each execution gets:
  * isolation (bubblewrap, the Debian package `bubblewrap`): new mount, PID, network, IPC and UTS
    namespaces; a filesystem of read-only /usr, /bin, /lib* and the Python install only, plus a
    fresh writable scratch dir (no /etc, no home, no project files, no site-packages, so no
    verifier: hidden tests and expected outputs never enter it); no network at all; an empty
    environment; as root, the program runs as `nobody` with no capabilities (so the process
    limit is enforced and limits cannot be raised);
  * limits: rlimits on CPU time, address space, processes, file size (stdout and stderr are files,
    so also output), no core dumps; a wall-clock timeout;
  * a kill switch: the whole process tree dies with the run (the PID namespace's init is killed,
    which takes every process inside with it, background ones and SIGTERM-ignoring ones too);
  * defence in depth inside: an audit hook refusing network, writes outside the scratch dir and
    process creation beyond a budget.
Without bubblewrap `run_python` refuses (SandboxUnavailable) unless the caller opts in to the
unisolated fallback (trusted code only): `allow_unisolated=True` or SI_JAX_SANDBOX=unisolated.
A verdict is never taken from the program's own say-so: callers compare its printed outputs with
expected values kept outside (si_jax/tasks/code.py), so exiting 0 early or patching builtins
cannot fake a pass.
"""

import dataclasses
import functools
import math
import os
import shutil
import signal
import site
import subprocess
import sys
import sysconfig
import tempfile
import time

NOBODY = 65534
_INSIDE = '/sandbox'  # Where the scratch dir is mounted in the isolated filesystem.

# Runs in the child before the user code. Audit hooks cannot be removed once added, so this holds
# for all Python code in the process (and in forked children, which inherit it).
#
# The child sets its own rlimits here rather than in a `preexec_fn`: running Python between fork
# and exec in a multithreaded parent (JAX is) can deadlock.
_PRELUDE = r'''
import os, resource, sys
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


class SandboxUnavailable(RuntimeError):
  """Isolation is missing and the caller did not accept running without it."""


def _python_dirs() -> list[str]:
  """The directories the interpreter needs, read-only (a pyenv or venv lives outside /usr)."""
  dirs = {os.path.realpath(d) for d in (sys.base_prefix, sys.prefix,
                                        os.path.dirname(os.path.realpath(sys.executable)))}
  return sorted(d for d in dirs if not d.startswith('/usr/'))


def _parents(path: str) -> list[str]:
  parts = path.strip('/').split('/')[:-1]
  return ['/' + '/'.join(parts[:i + 1]) for i in range(len(parts))]


def _site_packages() -> list[str]:
  paths = {sysconfig.get_paths()[k] for k in ('purelib', 'platlib')} | set(site.getsitepackages())
  return sorted(p for p in map(os.path.realpath, paths) if os.path.isdir(p))


def _bwrap_command(scratch: str) -> list[str]:
  """bubblewrap's arguments for a run whose only writable place is `scratch`. As root: no user
  namespace, and `setpriv` drops to nobody without capabilities inside (the kernel then enforces
  RLIMIT_NPROC, which it never does for root). Otherwise an unprivileged user namespace."""
  as_root = os.geteuid() == 0
  cmd = ['bwrap', '--die-with-parent', '--new-session', '--clearenv',
         '--setenv', 'PATH', '/usr/bin:/bin', '--setenv', 'LANG', 'C.UTF-8',
         '--setenv', 'HOME', _INSIDE, '--setenv', 'TMPDIR', _INSIDE]
  cmd += (['--unshare-ipc', '--unshare-pid', '--unshare-net', '--unshare-uts',
           '--unshare-cgroup-try'] if as_root else ['--unshare-all', '--cap-drop', 'ALL'])
  for path in ('/usr', '/bin', '/lib', '/lib64', '/lib32'):
    cmd += ['--ro-bind-try', path, path]
  for path in _python_dirs():  # Parents made traversable (bwrap's default is 0700 as root), so
    for parent in _parents(path):  # `nobody` reaches a pyenv's libpython through its RUNPATH.
      cmd += ['--perms', '0755', '--dir', parent]
    cmd += ['--ro-bind', path, path]
  for path in _site_packages():  # Hidden: they hold si_jax itself, whose task code derives
    cmd += ['--tmpfs', path]     # the hidden tests (the program gets the stdlib only).
  cmd += ['--proc', '/proc', '--dev', '/dev', '--bind', scratch, _INSIDE, '--chdir', _INSIDE, '--']
  if as_root:
    cmd += ['setpriv', f'--reuid={NOBODY}', f'--regid={NOBODY}', '--clear-groups',
            '--inh-caps=-all', '--bounding-set=-all', '--']
  return cmd


@functools.lru_cache(maxsize=1)
def isolation_error() -> str | None:
  """Why isolated runs are impossible here (None: they work). Probed once per process."""
  missing = [b for b in ('bwrap',) + (('setpriv',) if os.geteuid() == 0 else ())
             if shutil.which(b) is None]
  if missing:
    return (f'{" and ".join(missing)} not found: install the Debian package(s) '
            f'`apt-get install -y bubblewrap` (util-linux has setpriv); the README\'s test command '
            f'does it')
  with tempfile.TemporaryDirectory() as scratch:
    probe = subprocess.run(_bwrap_command(scratch) + [sys.executable, '-I', '-c', 'pass'],
                           capture_output=True, text=True, check=False)
  if probe.returncode:
    return f'bubblewrap cannot create its namespaces here: {probe.stderr.strip()[-300:]}'
  return None


def _unisolated_allowed(allow_unisolated: bool) -> bool:
  return allow_unisolated or os.environ.get('SI_JAX_SANDBOX') == 'unisolated'


def run_python(code: str, stdin: str = '', limits: SandboxLimits = SandboxLimits(), *,
               allow_unisolated: bool = False) -> ExecResult:
  """Runs `code` as a Python program in a fresh, isolated process tree under `limits`.

  Raises SandboxUnavailable when bubblewrap is missing, unless `allow_unisolated` (or
  SI_JAX_SANDBOX=unisolated): then only rlimits and the audit hook stand between the code and the
  host, which is fine for our own reference programs and never for a model's.
  """
  error = isolation_error()
  if error and not _unisolated_allowed(allow_unisolated):
    raise SandboxUnavailable(f'sandbox: refusing to run untrusted code without isolation: '
                             f'{error}. For trusted code only, pass allow_unisolated=True or set '
                             f'SI_JAX_SANDBOX=unisolated.')
  fork_budget = max(0, int(math.log2(max(1, limits.max_processes))))
  with tempfile.TemporaryDirectory(prefix='sandbox_') as tmp:
    scratch = os.path.join(tmp, 'work')  # The only writable place; outputs live beside it.
    os.mkdir(scratch)
    with open(os.path.join(scratch, 'main.py'), 'w', encoding='utf-8') as f:
      f.write(code)
    if error is None and os.geteuid() == 0:
      os.chown(scratch, NOBODY, NOBODY)
      os.chown(os.path.join(scratch, 'main.py'), NOBODY, NOBODY)
    root = scratch if error else _INSIDE  # The scratch dir as the program sees it.
    prefix = [] if error else _bwrap_command(scratch)
    out_path, err_path = os.path.join(tmp, 'stdout'), os.path.join(tmp, 'stderr')
    env = {'PATH': '/usr/bin:/bin', 'LANG': 'C.UTF-8', 'HOME': scratch, 'TMPDIR': scratch}
    start = time.monotonic()
    with open(out_path, 'wb') as out, open(err_path, 'wb') as err:
      proc = subprocess.Popen(
          prefix + [sys.executable, '-I', '-S', '-c', _PRELUDE, root, str(fork_budget),
                    str(limits.cpu_time_s), str(limits.memory_mb * 2**20),
                    str(limits.max_processes), str(limits.max_file_bytes)],
          stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=scratch, env=env,
          start_new_session=True)
      timed_out = False
      try:
        proc.communicate(stdin.encode('utf-8'), timeout=limits.wall_time_s)
      except subprocess.TimeoutExpired:
        timed_out = True
      finally:
        _kill_group(proc.pid)  # Kills bwrap, so its PID namespace and everything in it.
        proc.wait()
    wall_time_s = time.monotonic() - start
    stdout, _ = _read_capped(out_path, limits.max_output_bytes)
    stderr, stderr_tail = _read_capped(err_path, limits.max_output_bytes)
  returncode = proc.returncode
  if prefix and returncode > 128:  # bwrap reports a child killed by signal N as 128 + N.
    returncode = 128 - returncode
  status = 'timeout' if timed_out else _status(returncode, stderr_tail)
  return ExecResult(status, returncode, stdout, stderr, wall_time_s)
