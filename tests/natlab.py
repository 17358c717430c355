"""A NAT lab: Linux network namespaces, veth pairs and nftables masquerade (root only).

    pub  10.77.0.1 ---- 10.77.0.2  natN  192.168.N.1 ---- 192.168.N.2  privN
                        (masquerade out of its public side)

``pub`` is the public segment (bootstrap/relay nodes and public agents listen on 10.77.0.1,
several processes sharing it on different ports; with several NATs, pub holds one veth per NAT,
10.77.N.1). Each ``privN`` sits behind the router namespace ``natN``, which forwards and
masquerades its traffic: a private host can dial out; nothing in ``pub`` can dial in (it has no
route to 192.168.N.0/24). ``tc netem`` does not work on these machines; no delay is added.

:class:`NatLab` is a context manager: it records every namespace as it creates it and deletes
all of them on exit, whatever failed in between (deleting a namespace deletes its veths).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field


def lab_unavailable() -> str | None:
    """Why the lab cannot run here, or None."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "the NAT lab needs root (ip netns, nft); CI runs it as root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"{tool!r} is not installed (apt-get install -y iproute2 nftables)"
    return None


def _run(*args: str) -> None:
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {proc.stderr.strip() or proc.stdout}")


@dataclass
class Segment:
    """A private host behind a NAT router."""

    nat: str  # router namespace
    host: str  # private namespace
    public_ip: str  # the router's public address (what others see)
    private_ip: str


@dataclass
class NatLab:
    public_ip: str = "10.77.0.1"
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    namespaces: list[str] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)

    @property
    def pub(self) -> str:
        return f"p2pn-{self.tag}-pub"

    def _netns(self, name: str) -> str:
        _run("ip", "netns", "add", name)
        self.namespaces.append(name)  # recorded at once: cleaned up even if the next step fails
        self.ns(name, "ip", "link", "set", "lo", "up")
        return name

    def ns(self, name: str, *cmd: str) -> None:
        _run("ip", "netns", "exec", name, *cmd)

    def exec_prefix(self, name: str) -> list[str]:
        """Prefix a command with this to run it in namespace ``name``."""
        return ["ip", "netns", "exec", name]

    def __enter__(self) -> NatLab:
        try:
            self._netns(self.pub)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_private(self) -> Segment:
        """A new private host behind its own NAT, linked to pub."""
        n = len(self.segments) + 1
        try:
            nat = self._netns(f"p2pn-{self.tag}-nat{n}")
            host = self._netns(f"p2pn-{self.tag}-priv{n}")
            pub_if, wan_if = f"p{self.tag}w{n}", f"n{self.tag}w{n}"
            lan_if, host_if = f"n{self.tag}l{n}", f"h{self.tag}l{n}"
            # pub <-> nat (the NAT's public side)
            _run("ip", "link", "add", pub_if, "type", "veth", "peer", "name", wan_if)
            _run("ip", "link", "set", pub_if, "netns", self.pub)
            _run("ip", "link", "set", wan_if, "netns", nat)
            pub_ip = self.public_ip if n == 1 else f"10.77.{n - 1}.1"
            nat_wan = f"10.77.{n - 1}.2"
            self.ns(self.pub, "ip", "addr", "add", f"{pub_ip}/24", "dev", pub_if)
            self.ns(self.pub, "ip", "link", "set", pub_if, "up")
            self.ns(nat, "ip", "addr", "add", f"{nat_wan}/24", "dev", wan_if)
            self.ns(nat, "ip", "link", "set", wan_if, "up")
            # nat <-> private host
            _run("ip", "link", "add", lan_if, "type", "veth", "peer", "name", host_if)
            _run("ip", "link", "set", lan_if, "netns", nat)
            _run("ip", "link", "set", host_if, "netns", host)
            self.ns(nat, "ip", "addr", "add", f"192.168.{n}.1/24", "dev", lan_if)
            self.ns(nat, "ip", "link", "set", lan_if, "up")
            self.ns(host, "ip", "addr", "add", f"192.168.{n}.2/24", "dev", host_if)
            self.ns(host, "ip", "link", "set", host_if, "up")
            self.ns(host, "ip", "route", "add", "default", "via", f"192.168.{n}.1")
            self.ns(nat, "ip", "route", "add", "default", "via", pub_ip)
            self.ns(nat, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
            rules = (
                "table ip nat {\n"
                " chain postrouting {\n"
                "  type nat hook postrouting priority srcnat; policy accept;\n"
                f'  oifname "{wan_if}" masquerade\n'
                " }\n"
                "}\n"
            )
            subprocess.run(
                ["ip", "netns", "exec", nat, "nft", "-f", "-"],
                input=rules,
                text=True,
                check=True,
                capture_output=True,
            )
        except BaseException:
            self.close()
            raise
        segment = Segment(nat, host, nat_wan, f"192.168.{n}.2")
        self.segments.append(segment)
        return segment

    def close(self) -> None:
        """Delete every namespace this lab made (their veths go with them)."""
        errors = []
        for name in reversed(self.namespaces):
            proc = subprocess.run(
                ["ip", "netns", "del", name], capture_output=True, text=True, check=False
            )
            if proc.returncode != 0 and "No such file" not in proc.stderr:
                errors.append(f"{name}: {proc.stderr.strip()}")
        self.namespaces.clear()
        if errors:
            raise RuntimeError("NAT lab cleanup failed: " + "; ".join(errors))


def leftover_namespaces(tag: str) -> Sequence[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return [line.split()[0] for line in out.stdout.splitlines() if f"p2pn-{tag}-" in line]
