"""The sandbox's outcomes and limits for ordinary programs (hostile ones: test_sandbox_attacks)."""

import os
import tempfile
import time

from si_jax.tasks import sandbox

_LIMITS = sandbox.SandboxLimits(wall_time_s=2.0, cpu_time_s=2, memory_mb=256)


def _run(code: str, **kwargs) -> sandbox.ExecResult:
  return sandbox.run_python(code, limits=kwargs.pop('limits', _LIMITS), **kwargs)


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


def test_scratch_dir_is_removed(tmp_path, monkeypatch):
  monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))
  r = _run('import os\nprint(os.getcwd())\nopen("left_behind", "w").write("x")')
  assert (r.status, r.stdout) == ('ok', '/sandbox\n')
  assert not os.listdir(tmp_path)


