"""Tests for the best-effort code sandbox: outcomes, limits, and that the host survives."""

import os
import socket
import time

from si_jax.acquisition import sandbox

_LIMITS = sandbox.SandboxLimits(wall_time_s=2.0, cpu_time_s=2, memory_mb=256)


def _run(code: str, **kwargs) -> sandbox.ExecResult:
  return sandbox.run_python(code, limits=kwargs.pop('limits', _LIMITS), **kwargs)


def _live_pids_in_session(sid: int) -> list[int]:
  """Non-zombie processes of a session (zombies may linger if PID 1 does not reap)."""
  pids = []
  for name in os.listdir('/proc'):
    try:
      with open(f'/proc/{name}/stat') as f:
        fields = f.read().rsplit(')', 1)[1].split()
    except (OSError, IndexError):
      continue
    if int(fields[3]) == sid and fields[0] != 'Z':  # State, ppid, pgrp, session.
      pids.append(int(name))
  return pids


def _assert_session_gone(sid: int) -> None:
  deadline = time.monotonic() + 2.0
  while _live_pids_in_session(sid) and time.monotonic() < deadline:
    time.sleep(0.05)
  assert not _live_pids_in_session(sid)


def test_ok_program_with_stdin():
  r = _run('print(input()[::-1])', stdin='abc\n')
  assert (r.status, r.returncode, r.stdout, r.stderr) == ('ok', 0, 'cba\n', '')


def test_exception_is_error_with_traceback():
  r = _run('def f():\n  raise ValueError("boom")\nf()')
  assert r.status == 'error' and r.returncode == 1
  assert 'Traceback' in r.stderr and 'ValueError: boom' in r.stderr and 'main.py' in r.stderr


def test_infinite_loop_times_out():
  start = time.monotonic()
  r = _run('while True:\n  pass')
  assert r.status == 'timeout'
  assert time.monotonic() - start < 4.0


def test_cpu_limit_is_a_timeout():
  limits = sandbox.SandboxLimits(wall_time_s=10.0, cpu_time_s=1)
  r = _run('while True:\n  pass', limits=limits)
  assert r.status == 'timeout' and r.wall_time_s < 5.0


def test_memory_bombs():
  assert _run('x = bytearray(10**10)').status == 'out_of_memory'
  assert _run('x = []\nwhile True:\n  x.append(" " * 10**6)').status == 'out_of_memory'


def test_fork_bomb_is_contained():
  r = _run('import os, sys\nprint(os.getsid(0), flush=True)\nwhile True:\n  os.fork()')
  assert r.status != 'ok'
  assert 'process budget exhausted' in r.stderr
  _assert_session_gone(int(r.stdout.split()[0]))


def test_background_child_is_killed():
  r = _run('import os, time\nif os.fork() == 0:\n  time.sleep(60)\nprint(os.getsid(0))')
  assert r.status == 'ok'
  _assert_session_gone(int(r.stdout))


def test_no_network():
  with socket.socket() as server:
    server.bind(('127.0.0.1', 0))
    server.listen()
    server.setblocking(False)
    port = server.getsockname()[1]
    r = _run(f'import socket\nsocket.create_connection(("127.0.0.1", {port}), timeout=1)')
    assert r.status == 'error'
    assert 'PermissionError' in r.stderr or 'ConnectionRefusedError' in r.stderr
    try:
      server.accept()
      connected = True
    except BlockingIOError:
      connected = False
  assert not connected


def test_write_outside_is_refused(tmp_path):
  target = tmp_path / 'evil.txt'
  r = _run(f'open({str(target)!r}, "w").write("pwned")')
  assert r.status == 'error' and 'PermissionError' in r.stderr
  assert not target.exists()


def test_writes_inside_are_allowed():
  r = _run('open("a.txt", "w").write("hi")\nprint(open("a.txt").read())')
  assert (r.status, r.stdout) == ('ok', 'hi\n')


def test_deleting_outside_is_refused(tmp_path):
  project = tmp_path / 'project'
  project.mkdir()
  (project / 'keep.py').write_text('x = 1')
  r = _run(f'import shutil\nshutil.rmtree({str(project)!r})')
  assert r.status == 'error' and 'PermissionError' in r.stderr
  r = _run(f'import os\nos.remove({str(project / "keep.py")!r})')
  assert r.status == 'error' and 'PermissionError' in r.stderr
  assert (project / 'keep.py').read_text() == 'x = 1'


def test_output_is_capped():
  limits = sandbox.SandboxLimits(wall_time_s=2.0, max_output_bytes=1000)
  r = _run('import sys\nprint("x" * 200_000)\nprint("y" * 200_000, file=sys.stderr)',
           limits=limits)
  assert r.status == 'ok'
  assert r.stdout == 'x' * 1000 and r.stderr == 'y' * 1000


def test_temp_dir_is_removed():
  r = _run('import os\nprint(os.getcwd())')
  workdir = r.stdout.strip()
  assert r.status == 'ok' and workdir
  assert not os.path.exists(workdir) and not os.path.exists(os.path.dirname(workdir))


def test_run_tests_rewards():
  tests = 'assert add(2, 3) == 5\nassert add(-1, 1) == 0'
  reward, result = sandbox.run_tests('def add(a, b):\n  return a + b', tests, limits=_LIMITS)
  assert (reward, result.status) == (1.0, 'ok')
  reward, result = sandbox.run_tests('def add(a, b):\n  return a - b', tests, limits=_LIMITS)
  assert (reward, result.status) == (0.0, 'error') and 'AssertionError' in result.stderr
  reward, result = sandbox.run_tests('def add(a, b):\n  while True:\n    pass', tests,
                                     limits=_LIMITS)
  assert (reward, result.status) == (0.0, 'timeout')
