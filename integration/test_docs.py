"""Every configuration example in README.md and docs/ uses keys and values the bridge
accepts: each ```yaml block with a top-level `bridge:`, `pools:` or `listeners:` goes
through `fcgibridge check`. Paths in examples (/srv/app…) need not exist here, so only
schema errors count: an unknown key, a wrong type, a value outside its choices."""
from __future__ import annotations

import re
import shutil
import subprocess
import textwrap

import pytest

from harness import APPS, REPO, bridge_binary, free_ports, make_bridge, pool, wait_until

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



def documented_block(page: str, after: str) -> str:
    """The first fenced block of docs/`page` after the text `after`, dedented."""
    text = (REPO / "docs" / page).read_text()
    m = re.compile(r"```\n(.*?)```", re.S).search(text, text.index(after))
    return textwrap.dedent(m.group(1)).strip()


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A bridge with one pool, shop, of one worker: (its runtime directory, the pool's
    python, the worker's argv)."""
    workdir = tmp_path_factory.mktemp("docs-shop")
    python = shutil.which("python3")
    bridge = make_bridge(workdir, {"shop": pool(str(APPS / "edge_app.py"), python=python, processes=1)},
                         {"fcgi-tcp": {"fastcgi": f"127.0.0.1:{free_ports(1)[0]}", "pool": "shop"}})
    bridge.start()
    try:
        bridge.wait_ready([])
        pid = wait_until(lambda: next(iter(w["pid"] for w in bridge.pool_status("shop")["workers"]), None),
                         60, what="a worker of pool shop")
        argv = open(f"/proc/{pid}/cmdline", "rb").read().decode().split("\0")[:-1]
        yield workdir / "run", python, argv
    finally:
        bridge.stop()


def test_worker_contract_shows_the_command_line_a_worker_runs(shop):
    """A reader of the contract (someone writing a `ps` filter, or another worker) gets
    the program the bridge really passes to `-c`, its first line included."""
    runtime, python, argv = shop
    documented = (documented_block("worker-contract.md", "4. runs, in the pool's `chdir`")
                  .replace("<pool python>", python)
                  .replace("<pool>", "shop")
                  .replace("<runtime_dir>", str(runtime)))
    m = re.fullmatch(r'(\S+) -u -c "(.*)" (\S+)', documented, re.S)
    assert m, documented
    assert argv == [m.group(1), "-u", "-c", m.group(2), m.group(3)]


def test_worker_module_lists_the_files_the_bridge_installs(shop):
    runtime, _, _ = shop
    block = documented_block("worker-module.md", "## Files the bridge installs").splitlines()
    assert block[0] == "<runtime_dir>/python/fcgibridge_worker/"
    documented = sorted(line.split()[0] for line in block[1:])
    installed = sorted(f.name for f in (runtime / "python" / "fcgibridge_worker").iterdir()
                       if f.name != "__pycache__")
    assert documented == installed
