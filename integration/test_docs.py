"""Every configuration example in README.md and docs/ uses keys and values the bridge
accepts: each ```yaml block with a top-level `bridge:`, `pools:` or `listeners:` goes
through `fcgibridge check`. Paths in examples (/srv/app…) need not exist here, so only
schema errors count: an unknown key, a wrong type, a value outside its choices."""
from __future__ import annotations

import re
import subprocess
import textwrap

import pytest

from harness import REPO, bridge_binary

SCHEMA_ERROR = re.compile(
    r"unknown key|expected |invalid value|defined twice|is not one of|is neither|unknown web server|"
    r"not a (size|duration)|must be|needs ")


def examples():
    for md in sorted([REPO / "README.md", *(REPO / "docs").rglob("*.md")]):
        text = md.read_text()
        for m in re.finditer(r"```yaml\n(.*?)```", text, re.S):
            # A block in a numbered step is indented as deep as its fence.
            block = textwrap.dedent(m.group(1))
            if re.search(r"^(bridge|pools|listeners):", block, re.M):
                line = text[:m.start()].count("\n") + 2
                yield pytest.param(block, id=f"{md.relative_to(REPO)}:{line}")


EXAMPLES = list(examples())


def test_there_are_examples_to_check():
    assert len(EXAMPLES) >= 20


@pytest.mark.parametrize("block", EXAMPLES)
def test_example_configuration_is_accepted(block, tmp_path):
    (tmp_path / "50-example.yaml").write_text(block)
    r = subprocess.run([str(bridge_binary()), "check", "--config", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    schema = [ln for ln in r.stderr.splitlines() if SCHEMA_ERROR.search(ln)]
    assert not schema, "\n".join(schema)
