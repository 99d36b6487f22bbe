"""The README's configuration reference is generated from the code: keep it current."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_readme_config_reference_matches_the_code():
    generated = subprocess.run([str(REPO / "scripts/config-reference")], capture_output=True,
                               text=True, check=True).stdout.strip()
    readme = (REPO / "README.md").read_text()
    block = re.search(r"<!-- config-reference -->\n(.*?)\n<!-- /config-reference -->", readme, re.S)
    assert block, "README lost its config-reference markers"
    assert block.group(1).strip() == generated, "run scripts/update-readme"
