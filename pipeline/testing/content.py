"""Generated content for FakeWeb: deterministic images, decompression bombs, a TLS certificate."""
from __future__ import annotations

import datetime
import functools
import hashlib
import io
import ipaddress
import os
import struct
import zlib

BOMB_SIDE = 30000


@functools.lru_cache(maxsize=256)
def make_image(name: str, fmt: str = "jpg", width: int = 64, height: int = 48, color: str = "") -> bytes:
    """A deterministic image: a colour from `name` (or `color` as rrggbb) plus a dark square."""
    from PIL import Image, ImageDraw

    rgb = bytes.fromhex(color) if color else hashlib.sha256(name.encode()).digest()[:3]
    image = Image.new("RGB", (width, height), tuple(rgb))
    ImageDraw.Draw(image).rectangle((width // 4, height // 4, width // 2, height // 2), fill=(20, 20, 20))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG" if fmt == "png" else "JPEG", quality=90)
    return buffer.getvalue()


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


@functools.lru_cache(maxsize=4)
def make_bomb(fmt: str = "png", side: int = BOMB_SIDE) -> bytes:
    """A tiny file whose header declares a side x side image (a decompression bomb)."""
    if fmt == "png":
        header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
                + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))
    data = bytearray(make_image("bomb", "jpg", 16, 16))
    sof = data.index(b"\xff\xc0")  # baseline frame header: marker, length, precision, h, w
    data[sof + 5:sof + 9] = struct.pack(">HH", side, side)
    return bytes(data)


def make_self_signed_cert(folder: str, hosts: tuple[str, ...] = ("localhost", "127.0.0.1")) -> tuple[str, str]:
    """Write cert.pem and key.pem (a self-signed CA certificate for `hosts`); needs `cryptography`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName([_san(host) for host in hosts]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
    with open(cert_path, "wb") as out:
        out.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as out:
        out.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return cert_path, key_path


def _san(host: str):
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)
