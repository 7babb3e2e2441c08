"""Hostile programs against the sandbox: each is contained, and none fakes a pass.

Each program attacks one wall (filesystem, secrets, network, processes, limits, the verdict); the
test checks the effect on the host, not only the program's error. Processes are tracked by the
run's mount namespace, whose id a program prints from inside (nsfs ids are the same outside).
"""

import os
import socket
import subprocess
import sys
import time

import pytest

from si_jax.tasks import sandbox
from si_jax.tasks import code

# One worker runs them all: a fork bomb holds `nobody`'s process limit for its few seconds, and a
# concurrent test that forks as `nobody` would fail by that, not by its own fault.
pytestmark = pytest.mark.xdist_group('sandbox_attacks')

LIMITS = sandbox.SandboxLimits(wall_time_s=3.0, cpu_time_s=2, memory_mb=256)
SECRET = 'si-jax-test-secret-4f9c'
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # The checkout.
_NS = 'print("NS", __import__("os").readlink("/proc/self/ns/mnt"), flush=True)\n'
_LIBC = 'import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n'


def _run(program: str, limits=LIMITS, stdin: str = '') -> sandbox.ExecResult:
  return sandbox.run_python(program, stdin=stdin, limits=limits)


def _survivors(result: sandbox.ExecResult) -> list[int]:
  """Live host processes still in the run's mount namespace, after a short grace period."""
  ns = next(l.split()[1] for l in result.stdout.splitlines() if l.startswith('NS '))
  deadline = time.monotonic() + 2.0
  while True:
    alive = []
    for pid in filter(str.isdigit, os.listdir('/proc')):
      try:
        if os.readlink(f'/proc/{pid}/ns/mnt') != ns:
          continue
        with open(f'/proc/{pid}/stat') as f:
          if f.read().rsplit(')', 1)[1].split()[0] != 'Z':
            alive.append(int(pid))
      except OSError:
        continue
    if not alive or time.monotonic() > deadline:
      return alive
    time.sleep(0.05)


@pytest.fixture(autouse=True)
def _secret_in_host_env(monkeypatch):
  monkeypatch.setenv('SI_JAX_SECRET', SECRET)


# --- Filesystem ---------------------------------------------------------------------------------


@pytest.mark.parametrize('how', ['open', 'os_open', 'ctypes', 'shell'])
def test_write_outside_the_scratch_dir(tmp_path, how):
  target = tmp_path / f'pwned_{how}'
  program = {
      'open': f'open({str(target)!r}, "w").write("x")',
      'os_open': f'import os\nos.open({str(target)!r}, os.O_CREAT | os.O_WRONLY)',
      'ctypes': _LIBC + f'print(libc.open({str(target).encode()!r}, 0o101, 0o644))',
      'shell': f'import os\nos.system("echo x > {target}; echo x > /usr/pwned")',
  }[how]
  _run(program)
  assert not target.exists() and not os.path.exists('/usr/pwned')


def test_delete_the_project():
  project = REPO
  result = _run(f'import shutil, os\nprint(os.path.exists({project!r}))\n'
                f'shutil.rmtree({project!r}, ignore_errors=True)')
  assert result.stdout.strip() == 'False'
  assert os.path.exists(os.path.join(project, 'setup.py'))


def test_read_etc_passwd_and_host_files():
  result = _run('import os\nfor p in ["/etc/passwd", "/etc/shadow", "/root/.bash_history", '
                '"/proc/1/environ"]:\n  try:\n    print(open(p).read()[:100])\n'
                '  except Exception as e:\n    print("refused", p, type(e).__name__)')
  assert 'root:' not in result.stdout and result.stdout.count('refused') >= 3


def test_read_the_verifier_and_the_expected_outputs():
  """The hidden tests are derived by si_jax's task code: neither it nor any site-packages is
  visible, and a program that searches for it finds nothing to import or read."""
  repo = REPO
  result = _run(f'import os, sys\nprint(os.path.exists({repo!r}))\n'
                'try:\n  import si_jax\n  print("imported")\n'
                'except ImportError:\n  print("no si_jax")\n'
                'found = [os.path.join(d, f) for top in os.listdir("/") if top not in ("proc", "dev")'
                ' for d, _, fs in os.walk("/" + top) for f in fs if f == "code.py" and "tasks" in d]'
                '\nprint(found)', limits=sandbox.SandboxLimits(wall_time_s=30, cpu_time_s=30))
  assert result.stdout.split('\n')[:3] == ['False', 'no si_jax', '[]'], result.stdout


# --- Secrets and identity -------------------------------------------------------------------------


def test_environment_secrets_are_not_inherited():
  result = _run('import os, glob\nprint(dict(os.environ))\n'
                'for p in glob.glob("/proc/*/environ"):\n  try:\n    print(open(p).read())\n'
                '  except OSError:\n    pass')
  assert SECRET not in result.stdout and 'SI_JAX_SECRET' not in result.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason='dropping to nobody applies when the host runs as root')
def test_runs_as_nobody_without_capabilities():
  result = _run('import os\nprint(os.getuid(), os.geteuid())\n'
                'print([l for l in open("/proc/self/status") if l.startswith("CapEff")][0])')
  assert result.stdout.split('\n')[0] == f'{sandbox.NOBODY} {sandbox.NOBODY}'
  assert result.stdout.split('\n')[1].split()[1] == '0000000000000000'


# --- Network ----------------------------------------------------------------------------------------


@pytest.mark.parametrize('how', ['socket', 'ctypes'])
def test_no_connection_to_the_host(how):
  with socket.socket() as server:
    server.bind(('127.0.0.1', 0))
    server.listen()
    server.setblocking(False)
    port = server.getsockname()[1]
    program = {
        'socket': f'import socket\nsocket.create_connection(("127.0.0.1", {port}), timeout=1)',
        'ctypes': _LIBC + 'import socket, struct\nfd = libc.socket(2, 1, 0)\n'
                  f'addr = struct.pack("!HH4s8x", 0, {port}, socket.inet_aton("127.0.0.1"))\n'
                  'addr = struct.pack("=H", 2) + addr[2:]\n'
                  'print("connect", libc.connect(fd, addr, len(addr)))',
    }[how]
    _run(program)
    with pytest.raises(BlockingIOError):
      server.accept()


def test_no_outside_network():
  result = _run('import socket\ntry:\n  socket.create_connection(("1.1.1.1", 53), timeout=1)\n'
                '  print("connected")\nexcept OSError as e:\n  print("refused", e)\n'
                'print(sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").readlines()[2:]))')
  assert 'connected' not in result.stdout
  assert result.stdout.splitlines()[-1] == "['lo']"  # An empty network namespace: loopback only.


# --- Processes ----------------------------------------------------------------------------------------


def test_shell_through_subprocess_sees_the_sandbox_only():
  result = _run('import subprocess\nprint(subprocess.run(["sh", "-c", '
                '"id -u; echo $SI_JAX_SECRET; ls /; cat /etc/passwd"], capture_output=True, '
                'text=True).stdout)')
  assert SECRET not in result.stdout and 'root:' not in result.stdout


def test_fork_bomb_is_bounded_and_cleaned_up():
  result = _run(_NS + 'import os\nwhile True:\n  try:\n    os.fork()\n  except Exception:\n'
                '    pass')
  assert result.status != 'ok' and not _survivors(result)


def test_ctypes_fork_bomb_is_bounded_and_cleaned_up():
  """libc fork() skips the audit hook's budget: the kernel's process limit and the PID
  namespace hold it."""
  result = _run(_NS + _LIBC + 'while True:\n  libc.fork()')
  assert result.status != 'ok' and not _survivors(result)


def test_background_daemon_ignoring_sigterm_does_not_outlive_the_run():
  result = _run(_NS + 'import os, signal, time\nif os.fork() == 0:\n  os.setsid()\n'
                '  if os.fork() == 0:\n    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n'
                '    signal.signal(signal.SIGHUP, signal.SIG_IGN)\n    time.sleep(60)\n'
                '  os._exit(0)\nprint("parent done", flush=True)')
  assert 'parent done' in result.stdout and not _survivors(result)


def test_main_process_ignoring_sigterm_is_killed():
  start = time.monotonic()
  result = _run(_NS + 'import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n'
                'while True:\n  time.sleep(0.1)')
  assert result.status == 'timeout' and time.monotonic() - start < LIMITS.wall_time_s + 3
  assert not _survivors(result)


def test_killing_everything_it_can_see_spares_the_host():
  bystander = subprocess.Popen(['sleep', '60'])  # A host process the program would love to kill.
  try:
    _run('import os, signal\nos.kill(-1, signal.SIGKILL)\nos.kill(1, signal.SIGKILL)\n'
         f'os.kill({bystander.pid}, signal.SIGKILL)')
    time.sleep(0.2)
    assert bystander.poll() is None  # Still running.
  finally:
    bystander.kill()
    bystander.wait()


# --- Resource limits --------------------------------------------------------------------------------


@pytest.mark.parametrize('program', [
    'x = bytearray(20 * 2**30)',  # 20 GB at once.
    'x = []\nwhile True:\n  x.append(bytearray(10**7))',  # Step by step.
    'import mmap\nm = mmap.mmap(-1, 20 * 2**30)\nm[-1] = 1',
])
def test_memory_bombs(program):
  assert _run(program).status in ('out_of_memory', 'error', 'killed')


def test_raising_the_limits_is_refused():
  result = _run('import resource\nfor r in (resource.RLIMIT_AS, resource.RLIMIT_CPU, '
                'resource.RLIMIT_NPROC):\n  try:\n    resource.setrlimit(r, (-1, -1))\n'
                '    print("raised", r)\n  except (ValueError, OSError) as e:\n    print("refused")\n'
                'x = bytearray(20 * 2**30)')
  assert 'raised' not in result.stdout and result.stdout.count('refused') == 3
  assert result.status == 'out_of_memory'


def test_infinite_loop_and_sleep_forever_time_out():
  for program in ('while True:\n  pass', 'import time\ntime.sleep(3600)'):
    start = time.monotonic()
    assert _run(program).status == 'timeout'
    assert time.monotonic() - start < LIMITS.wall_time_s + 3


def test_a_gigabyte_of_stdout_is_cut_short():
  start = time.monotonic()
  result = _run('import sys\nchunk = "x" * 2**20\nfor _ in range(1024):\n  sys.stdout.write(chunk)')
  assert result.status != 'ok' and len(result.stdout) <= LIMITS.max_output_bytes
  assert time.monotonic() - start < LIMITS.wall_time_s + 3


def test_filling_the_disk_is_cut_short():
  result = _run('f = open("big", "wb")\nfor _ in range(1024):\n  f.write(b"x" * 2**20)')
  assert result.status != 'ok'  # RLIMIT_FSIZE: SIGXFSZ past max_file_bytes.


def test_binary_junk_output_is_decoded():
  result = _run('import sys\nsys.stdout.buffer.write(bytes(range(256)) * 10)')
  assert result.status == 'ok' and '\ufffd' in result.stdout


# --- The verdict ------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def problem():
  return code.CodeTask().generate(seed=0, n=1, difficulty=2)[0]


@pytest.mark.parametrize('completion', [
    'import os\nos._exit(0)\n',  # Exit 0 before the tests run.
    'import sys\nsys.exit(0)\n',
    'def f(*a):\n  class Eq:\n    __eq__ = lambda s, o: True\n  return Eq()\n',  # Equal to all.
    'import builtins\n_p = builtins.print\nbuiltins.print = lambda *a, **k: _p("__si_jax_results__ [1, 2]")\n'
    'def f(*a):\n  return 0\n',  # Patch print to forge the result line.
    'import atexit, os\natexit.register(lambda: print("__si_jax_results__ []"))\n'
    'def f(*a):\n  raise SystemExit(0)\n',  # Forge a line at exit.
    'import sys\nsys.modules["json"] = None\ndef f(*a):\n  return 0\n',  # Break the harness.
    'def f(*a):\n  import gc\n  return [o for o in gc.get_objects() if isinstance(o, list)][0]\n',
])
def test_a_forged_pass_is_never_counted(problem, completion):
  assert code.CodeTask().verify(problem, completion) == 0.0
  assert code.CodeTask().verify(problem, problem.answer) == 1.0  # The reference still passes.


def test_without_isolation_untrusted_code_is_refused(monkeypatch):
  monkeypatch.setattr(sandbox, 'isolation_error', lambda: 'bwrap not found: install bubblewrap')
  monkeypatch.delenv('SI_JAX_SANDBOX', raising=False)
  with pytest.raises(sandbox.SandboxUnavailable, match='bubblewrap'):
    sandbox.run_python('print(1)')
  with pytest.raises(sandbox.SandboxUnavailable):  # Not a silent reward of 0.
    code.CodeTask().verify(code.CodeTask().generate(seed=0, n=1, difficulty=1)[0], 'pass')
  assert sandbox.run_python('print(1)', allow_unisolated=True).stdout == '1\n'


def test_isolation_is_available_here():
  """CI installs bubblewrap (the README's test command): every test above ran isolated."""
  assert sandbox.isolation_error() is None, sandbox.isolation_error()
  assert sys.platform.startswith('linux')
