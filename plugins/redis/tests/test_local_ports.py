"""Ports of the throwaway Redis groups: reserved across test processes until released."""

from __future__ import annotations

import subprocess
import sys

from callq_redis.local import free_ports, release_ports


def test_reserved_ports_are_not_handed_out_again_until_released() -> None:
    first = free_ports(3, 7700)
    try:
        # nothing listens on them yet, and another process still does not get them
        other = subprocess.run(
            [sys.executable, "-c", "from callq_redis.local import free_ports; print(free_ports(3, 7700))"],
            capture_output=True, text=True, timeout=30, check=True)
        assert not set(eval(other.stdout)) & set(first)  # noqa: S307 - a list of ints we printed
        second = free_ports(3, 7700)
        assert not set(second) & set(first)
        release_ports(second)
    finally:
        release_ports(first)
    # the child's reservation died with it; ours are released
    again = free_ports(3, 7700)
    release_ports(again)
    assert again == first
