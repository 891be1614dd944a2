"""A network path to PostgreSQL that a test can cut like a vanished host: packets to it are
dropped, nothing answers, no connection is refused. Needs root and iproute2 (network
namespaces); tests that use it skip without them.

The path: the test's process -> a relay inside a network namespace (reached over a veth pair)
-> a relay in this namespace -> the database. `cut()` takes the namespace's address away, so
what this side sends there is dropped; `heal()` gives it back.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from sqlalchemy.engine import make_url

from tests.servers import free_port


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@dataclass
class NetworkPath:
    url: str  # DATABASE_URL through the path
    namespace: str
    device: str
    address: str

    def cut(self) -> None:
        _ip("-n", self.namespace, "addr", "del", f"{self.address}/24", "dev", self.device)

    def heal(self) -> None:
        _ip("-n", self.namespace, "addr", "add", f"{self.address}/24", "dev", self.device)


def _relay(
    command: list[str], listen: tuple[str, int], target: tuple[str, int]
) -> subprocess.Popen[str]:
    relay = subprocess.Popen(
        [*command, sys.executable, "-m", "tests.tcp_proxy", listen[0], str(listen[1]),
         target[0], str(target[1])],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert relay.stdout is not None and relay.stdout.readline().strip() == "ready"
    return relay


@contextmanager
def network_path_to(database_url: str) -> Iterator[NetworkPath]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("a network cut needs root and iproute2")
    tag = f"cb{os.getpid() % 100000}"
    subnet = f"10.231.{os.getpid() % 250}"
    namespace, outside, inside = f"{tag}ns", f"{tag}a", f"{tag}b"
    try:
        _ip("netns", "add", namespace)
    except subprocess.CalledProcessError as error:
        pytest.skip(f"no network namespaces here: {error.stderr.strip()}")
    relays: list[subprocess.Popen[str]] = []
    try:
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside, "netns", namespace)
        _ip("addr", "add", f"{subnet}.1/24", "dev", outside)
        _ip("link", "set", outside, "up")
        _ip("-n", namespace, "addr", "add", f"{subnet}.2/24", "dev", inside)
        _ip("-n", namespace, "link", "set", inside, "up")
        url = make_url(database_url)
        database = (url.host or "127.0.0.1", url.port or 5432)
        near, far = (f"{subnet}.1", free_port()), (f"{subnet}.2", free_port())
        relays.append(_relay([], near, database))
        relays.append(_relay(["ip", "netns", "exec", namespace], far, near))
        through = url.set(host=far[0], port=far[1]).render_as_string(hide_password=False)
        yield NetworkPath(through, namespace, inside, far[0])
    finally:
        for relay in relays:
            relay.kill()
            relay.wait()
        subprocess.run(["ip", "link", "del", outside], capture_output=True)
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
