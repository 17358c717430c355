"""The IP addresses of this machine's interfaces, read from the OS (through psutil)."""

from __future__ import annotations

import ipaddress
import socket

import psutil

from p2pnet.host.addresses import IPAddress


def interface_ips() -> list[IPAddress]:
    """Every IPv4 and IPv6 address of every interface, loopback included."""
    found: list[IPAddress] = []
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            if entry.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            try:
                found.append(ipaddress.ip_address(entry.address.split("%", 1)[0]))
            except ValueError:
                continue
    return found
