"""CI runs the README's set-up block as written: the same lines, in the same order, and nothing else."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_exactly_the_readme_set_up_block():
    section = ROOT.joinpath("README.md").read_text().split("## Set up, train, test", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1).splitlines()
    ci = [line for line in ROOT.joinpath(".ci", "run").read_text().splitlines()
          if line.strip() and not line.startswith("#")]
    assert ci[:2] == ["set -euo pipefail", 'cd "$(dirname "$0")/.."']
    assert ci[2:] == [line for line in block if line.strip()]
