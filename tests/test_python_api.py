"""The README's Python example runs verbatim and fine-tunes with a plain reward function."""

import json
import re
from pathlib import Path


def test_readme_python_example_runs_verbatim(tmp_path, monkeypatch):
    readme = Path("README.md").read_text()
    block = re.search(r"<!-- tests/test_python_api.py runs this block verbatim -->\n```python\n(.*?)```", readme, re.S).group(1)
    repo = Path.cwd()
    monkeypatch.chdir(tmp_path)  # the example writes runs/...; configs/ and models/ are linked in
    for name in ("configs", "models"):
        (tmp_path / name).symlink_to(repo / name)
    exec(compile(block, "README.md", "exec"), {"__name__": "readme_example"})
    run_dir = tmp_path / "runs" / "python_api_example"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "python.redness_before" in summary and "python.redness_after" in summary
    assert [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2]
