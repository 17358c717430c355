"""A NAT lab: Linux network namespaces, veth pairs and nftables masquerade (root only).

    pub1 10.77.0.1 --+                      (public hosts: add_public)
    pub2 10.77.0.2 --+-- br0 (namespace core)
                     +-- 10.77.0.10N natN 192.168.N.1 ---- 192.168.N.2 privN

The public segment is a bridge in its own namespace; each public host is a namespace with one
address on it (``pub`` is the first, 10.77.0.1; several processes may share a host on different
ports). Each private host ``privN`` sits behind the router namespace ``natN``, which forwards and
masquerades its traffic out of its public side: a private host can dial out; nothing public can
dial in (no route to 192.168.N.0/24). ``tc netem`` does not work on these machines; no delay is
added.

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
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    namespaces: list[str] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    #: Public host namespaces and their addresses, in creation order.
    public: list[tuple[str, str]] = field(default_factory=list)
    #: The first three octets of the public segment's /24. 10.77.0 is private, so a node that
    #: only dials global addresses (js-libp2p's DCUtR) needs a global one here; the lab's
    #: namespaces have no way out, so such an address never leaves them (as in
    #: tests/interop/test_autonat_interop.py).
    public_net: str = "10.77.0"

    @property
    def core(self) -> str:
        return f"p2pn-{self.tag}-core"

    @property
    def pub(self) -> str:
        return self.public[0][0]

    @property
    def public_ip(self) -> str:
        return self.public[0][1]

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
            self._netns(self.core)
            self.ns(self.core, "ip", "link", "add", "br0", "type", "bridge")
            self.ns(self.core, "ip", "link", "set", "br0", "up")
            self.add_public()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _plug(self, namespace: str, ifname: str, ip: str, index: int) -> None:
        """A veth from the bridge to ``namespace`` (as ``ifname``, address ``ip``/24)."""
        # Created in the root namespace under unique names, renamed once moved.
        outer, inner = f"b{self.tag}{index}", f"i{self.tag}{index}"
        _run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
        _run("ip", "link", "set", outer, "netns", self.core)
        _run("ip", "link", "set", inner, "netns", namespace)
        self.ns(namespace, "ip", "link", "set", inner, "name", ifname)
        self.ns(self.core, "ip", "link", "set", outer, "master", "br0")
        self.ns(self.core, "ip", "link", "set", outer, "up")
        self.ns(namespace, "ip", "addr", "add", f"{ip}/24", "dev", ifname)
        self.ns(namespace, "ip", "link", "set", ifname, "up")

    def add_public(self) -> str:
        """A new public host on the bridge; returns its namespace (its IP: ``public[-1][1]``)."""
        n = len(self.public) + 1
        try:
            name = self._netns(f"p2pn-{self.tag}-pub{n}")
            ip = f"{self.public_net}.{n}"
            self._plug(name, "eth0", ip, n)
        except BaseException:
            self.close()
            raise
        self.public.append((name, ip))
        return name

    def add_private(self, *, firewall: bool = False, random_ports: bool = False) -> Segment:
        """A new private host behind its own NAT on the public segment.

        ``firewall``: the router drops unsolicited inbound packets, as home routers do (without
        it, the router's own kernel answers a SYN to an unmapped port with a RST, which aborts a
        hole punch whose SYN arrives before the local side's has left). ``random_ports``: the
        NAT picks a random source port for every mapping (a "symmetric" NAT), so no peer can
        predict where a mapping will be: hole punching fails."""
        n = len(self.segments) + 1
        wan_ip = f"{self.public_net}.{100 + n}"
        try:
            nat = self._netns(f"p2pn-{self.tag}-nat{n}")
            host = self._netns(f"p2pn-{self.tag}-priv{n}")
            self._plug(nat, "wan", wan_ip, 100 + n)
            lan_if, host_if = f"n{self.tag}l{n}", f"h{self.tag}l{n}"
            _run("ip", "link", "add", lan_if, "type", "veth", "peer", "name", host_if)
            _run("ip", "link", "set", lan_if, "netns", nat)
            _run("ip", "link", "set", host_if, "netns", host)
            self.ns(nat, "ip", "addr", "add", f"192.168.{n}.1/24", "dev", lan_if)
            self.ns(nat, "ip", "link", "set", lan_if, "up")
            self.ns(host, "ip", "addr", "add", f"192.168.{n}.2/24", "dev", host_if)
            self.ns(host, "ip", "link", "set", host_if, "up")
            self.ns(host, "ip", "route", "add", "default", "via", f"192.168.{n}.1")
            self.ns(nat, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
            masquerade = "masquerade random" if random_ports else "masquerade"
            rules = (
                "table ip nat {\n"
                " chain postrouting {\n"
                "  type nat hook postrouting priority srcnat; policy accept;\n"
                f'  oifname "wan" {masquerade}\n'
                " }\n"
                "}\n"
            )
            if firewall:
                # Only what belongs to a mapping (conntrack) comes in; ICMP errors too.
                rules += (
                    "table ip filter {\n"
                    " chain input {\n"
                    "  type filter hook input priority filter; policy accept;\n"
                    '  iifname "wan" ct state established,related accept\n'
                    '  iifname "wan" drop\n'
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
        segment = Segment(nat, host, wan_ip, f"192.168.{n}.2")
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
