"""Two bridges behind one front end, all on loopback addresses (127.0.0.2 and 127.0.0.3
for the bridges, free ports for the doc's): docs/scale-out.md's configurations under a
steady load, a drain, a replacement and a SIGKILL (scale_out_support.py has the
scenario; test_scale_out_netns.py runs it across network namespaces)."""
from __future__ import annotations

import pytest

from scale_out_support import Loopback, drain_replace_and_kill


@pytest.mark.parametrize("front", ["nginx", "haproxy"])
def test_drain_replace_and_kill_behind_one_front_end(tmp_path, front):
    drain_replace_and_kill(tmp_path, front, Loopback())
