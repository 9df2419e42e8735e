"""Which addresses a fetch may connect to: public unicast, or inside `allow_networks`."""
from __future__ import annotations

import ipaddress
import socket
from typing import Iterable

from .reasons import BlockedAddress

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


def address_allowed(address: str, networks: tuple[IPNetwork, ...] = ()) -> bool:
    """Public unicast addresses are allowed; anything else only inside `networks`."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in net for net in networks):
        return True
    special = (ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_multicast
               or ip.is_reserved or ip.is_unspecified)
    return ip.is_global and not special


def resolve_allowed(host: str, port: int, networks: tuple[IPNetwork, ...]) -> list[tuple]:
    """Resolve `host` once; keep the (family, sockaddr) pairs whose address is allowed."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    allowed = [(family, addr) for family, _, _, _, addr in infos if address_allowed(addr[0], networks)]
    if not allowed:
        seen = sorted({addr[0] for _, _, _, _, addr in infos})
        raise BlockedAddress(f"{host} resolves to {', '.join(seen)}: not allowed")
    return allowed


def check_peer(sock: socket.socket, vetted: str, networks: tuple[IPNetwork, ...]) -> None:
    """The peer a socket actually connected to must be the vetted address, and allowed."""
    peer = sock.getpeername()[0]
    same = ipaddress.ip_address(peer.split("%", 1)[0]) == ipaddress.ip_address(vetted.split("%", 1)[0])
    if not same or not address_allowed(peer, networks):
        raise BlockedAddress(f"connected peer {peer} is not the vetted address {vetted}")
