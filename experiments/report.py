"""Writes an experiment's result: <workdir>/<name>.md (the table) and <name>.json (the rows)."""

import json
import os


def write(workdir: str, name: str, markdown: str, data) -> None:
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, f'{name}.md'), 'w') as f:
    f.write(markdown)
  with open(os.path.join(workdir, f'{name}.json'), 'w') as f:
    json.dump(data, f, indent=1)
  print(markdown)
