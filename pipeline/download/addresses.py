"""Which addresses a fetch may connect to: public unicast, or inside `allow_networks`."""
from __future__ import annotations

import ipaddress
import socket
from typing import Iterable

from .reasons import BlockedAddress

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


# Refused unless `allow_networks` covers them, whatever this Python's ipaddress lists say.
ALWAYS_REFUSED = parse_networks((
    "192.0.0.0/24",   # IETF protocol assignments
    "::/96",          # IPv4-compatible (deprecated, RFC 4291): never a real destination
    "fec0::/10",      # site-local (deprecated, RFC 3879): private by intent
    "2001::/32",      # Teredo: the client's IPv4 address is obfuscated, so it cannot be judged
))
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # the well-known prefix (RFC 6052)


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a packet to `ip` reaches: IPv4-mapped (::ffff:0:0/96), 6to4
    (2002::/16) or NAT64 (64:ff9b::/96); None for any other IPv6 address."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    return None


def address_allowed(address: str, networks: tuple[IPNetwork, ...] = ()) -> bool:
    """Whether a fetch may connect to `address`: always inside `networks` (allow_networks),
    otherwise only if it is public unicast.

    An IPv6 address that carries an IPv4 address (IPv4-mapped, 6to4, NAT64) is judged as that
    IPv4 address, so `2002:7f00:1::1` is 127.0.0.1. Refused outside `networks` besides
    loopback, private, link-local, multicast, reserved and unspecified: ALWAYS_REFUSED
    (192.0.0.0/24, IPv4-compatible ::/96, site-local fec0::/10, and Teredo 2001::/32, whose
    embedded client address is obfuscated and never trusted).
    """
    return ip_allowed(ipaddress.ip_address(address.split("%", 1)[0]), networks)


def ip_allowed(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, networks: tuple[IPNetwork, ...]) -> bool:
    """`address_allowed` for a parsed address."""
    if any(ip in net for net in networks):
        return True
    embedded = embedded_ipv4(ip) if ip.version == 6 else None
    if embedded is not None:
        return ip_allowed(embedded, networks)
    if any(ip in net for net in ALWAYS_REFUSED):
        return False
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
