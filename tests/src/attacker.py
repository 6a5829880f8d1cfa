# An agent that behaves like an attacker, for the wall tests: raw HTTP/1.1 and WebSocket
# clients over the sandbox's proxy, reading every byte the gateway lets through (status
# line, headers, chunk framing, trailers, frames) the way a hostile process would. Imported
# by the test scripts as `attacker`; prints nothing itself.
import base64
import os
import socket
import ssl
import struct
import urllib.parse

_P = urllib.parse.urlsplit(os.environ["https_proxy"])
_AUTH = base64.b64encode(
    (urllib.parse.unquote(_P.username or "") + ":" + urllib.parse.unquote(_P.password or "")).encode()
).decode()
_CA = "/etc/ssl/certs/ca-certificates.crt"


def _read_head(s):
    head = b""
    while b"\r\n\r\n" not in head:
        b = s.recv(1)
        if not b:
            break
        head += b
    return head


def tunnel(host, port=443, alpn=("http/1.1",)):
    """A TLS connection to host:port through the gateway (raises with the refusal)."""
    s = socket.create_connection((_P.hostname, _P.port), timeout=30)
    s.sendall(
        f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Proxy-Authorization: Basic {_AUTH}\r\n\r\n".encode()
    )
    head = _read_head(s)
    if b" 200" not in head.split(b"\r\n")[0]:
        rest = b""
        try:
            rest = s.recv(65536)
        except Exception:
            pass
        raise RuntimeError((head + rest).decode(errors="replace").replace("\r\n", " | "))
    ctx = ssl.create_default_context(cafile=_CA)
    ctx.set_alpn_protocols(list(alpn))
    return ctx.wrap_socket(s, server_hostname=host)


def _read_all(t):
    out = b""
    while True:
        try:
            b = t.recv(65536)
        except Exception:
            break
        if not b:
            break
        out += b
    return out


def raw(host, path, headers=(), method="GET", body=None, chunks=None, trailers=()):
    """Every byte of the answer to one request. `chunks` sends a chunked body (with
    `trailers`); `body` a plain one."""
    t = tunnel(host)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "TE: trailers",
             "Accept-Encoding: gzip, deflate, br, zstd", "Connection: close"]
    lines += list(headers)
    if chunks is not None:
        lines.append("Transfer-Encoding: chunked")
    elif body is not None:
        lines.append(f"Content-Length: {len(body)}")
    req = ("\r\n".join(lines) + "\r\n\r\n").encode()
    if chunks is not None:
        for c in chunks:
            req += b"%x\r\n" % len(c) + c + b"\r\n"
        req += b"0\r\n" + b"".join(t_.encode() + b"\r\n" for t_ in trailers) + b"\r\n"
    elif body is not None:
        req += body
    t.sendall(req)
    return _read_all(t)


def dechunk(raw_answer):
    """The body of a raw HTTP/1.1 answer (chunked or not)."""
    head, _, rest = raw_answer.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" not in head.lower():
        return rest
    out = b""
    while rest:
        size, _, rest = rest.partition(b"\r\n")
        n = int(size.split(b";")[0] or b"0", 16)
        if n == 0:
            break
        out += rest[:n]
        rest = rest[n + 2:]
    return out


def _mask(payload):
    key = os.urandom(4)
    return key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def _frame(opcode, payload, fin=True):
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    if n < 126:
        head = struct.pack("!BB", b0, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", b0, 0x80 | 127, n)
    return head + _mask(payload)


def _recv_exact(t, n):
    out = b""
    while len(out) < n:
        b = t.recv(n - len(out))
        if not b:
            raise EOFError
        out += b
    return out


class WebSocket:
    """A raw WebSocket client: frames as they arrive, compression offered like Codex does."""

    def __init__(self, host, path, headers=()):
        self.t = tunnel(host)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
                 "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"]
        lines += list(headers)
        self.t.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.head = _read_head(self.t)
        self.ok = b" 101 " in self.head.split(b"\r\n")[0] + b" "
        self.t.settimeout(10)

    def send(self, text):
        self.t.sendall(_frame(1, text.encode() if isinstance(text, str) else text))

    def send_split(self, text):
        """One byte per frame: a text frame, then continuations."""
        data = text.encode()
        for i, b in enumerate(data):
            self.t.sendall(_frame(1 if i == 0 else 0, bytes([b]), fin=i == len(data) - 1))

    def frame(self):
        """(fin, rsv, opcode, payload), or None when the connection ends."""
        try:
            b0, b1 = _recv_exact(self.t, 2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", _recv_exact(self.t, 2))
            elif n == 127:
                (n,) = struct.unpack("!Q", _recv_exact(self.t, 8))
            if b1 & 0x80:
                key = _recv_exact(self.t, 4)
                data = bytes(x ^ key[i % 4] for i, x in enumerate(_recv_exact(self.t, n)))
            else:
                data = _recv_exact(self.t, n)
            return (bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0x0F, data)
        except (EOFError, OSError):
            return None

    def messages(self, count):
        """Up to `count` whole messages (continuations joined), as (opcode, payload, rsv
        bits seen); stops at a close (kept as opcode 8) or the end."""
        out = []
        while len(out) < count:
            op, data, rsv = None, b"", 0
            while True:
                f = self.frame()
                if f is None:
                    return out
                fin, r, opcode, payload = f
                rsv |= r
                if opcode == 8:
                    out.append((8, payload, rsv))
                    return out
                if opcode in (9, 10):
                    continue
                if op is None:
                    op = opcode
                data += payload
                if fin:
                    break
            out.append((op, data, rsv))
        return out


def count(host, path):
    """How many bytes the answer to a GET has, read and thrown away as they come."""
    t = tunnel(host)
    t.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    n = 0
    while True:
        try:
            b = t.recv(1 << 20)
        except Exception:
            break
        if not b:
            break
        n += len(b)
    return n
