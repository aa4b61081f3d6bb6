"""The VM tests' probe: reports facts about the guest it runs in, one JSON line per fact.

Each argument is a step ``verb`` or ``verb:operand``, run in order; a fact is printed as
``PROBE {"fact": ..., "arg": ..., "value": ...}`` so that the tests can find it on the
console among vinitd's lines. Steps:

    as:NAME        tag the facts that follow with NAME (for VMs with several programs)
    ids  caps  hostname  env  net  clock         facts about the process and the machine
    read:PATH  sysctl:dotted.name  writable:DIR  statvfs:PATH  dns:[SERVER]
    print:TEXT  sleep:SECONDS  touch:PATH  listen:PORT  accept  exit:STATUS
    on-term:PATH   from now on SIGTERM writes PATH (with fsync), reports it and exits 0
    wait           sleep until a signal ends the process
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from types import FrameType

SIOCGIFADDR = 0x8915
SIOCGIFNETMASK = 0x891B
SAVED_TEXT = "saved on SIGTERM\n"

DNS_TIMEOUT = 2.0
# A DNS query for "localhost." type A, id 0x7072.
DNS_QUERY = bytes.fromhex("70720100000100000000000009") + b"localhost\0" + bytes.fromhex("00010001")

_listeners: list[socket.socket] = []
_tag = ""


def report(fact: str, arg: str, value: object) -> None:
    record = {"fact": fact, "arg": arg, "value": value, "tag": _tag}
    print(f"PROBE {json.dumps(record, sort_keys=True)}", flush=True)


def tag(name: str) -> object:
    global _tag
    _tag = name
    return None


def ids(_: str) -> object:
    return {"uid": os.getuid(), "gid": os.getgid(), "euid": os.geteuid(), "groups": os.getgroups()}


def caps(_: str) -> object:
    found = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _sep, value = line.partition(":")
            if key.startswith("Cap"):
                found[key] = value.strip()
    return found


def hostname(_: str) -> object:
    return socket.gethostname()


def env(_: str) -> object:
    return dict(os.environ)


def clock(_: str) -> object:
    return time.monotonic()


def read(path: str) -> object:
    try:
        info = os.stat(path)
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as err:
        return {"error": err.strerror}
    try:
        text: str | None = data.decode()
    except UnicodeDecodeError:
        text = None
    return {"mode": info.st_mode & 0o7777, "size": len(data), "text": text, "hex": data.hex()}


def sysctl(name: str) -> object:
    with open("/proc/sys/" + name.replace(".", "/")) as handle:
        return handle.read().strip()


def writable(directory: str) -> object:
    path = os.path.join(directory, f".probe-writable-{os.getpid()}")
    try:
        with open(path, "w") as handle:
            handle.write("x")
        os.unlink(path)
    except OSError as err:
        return {"writable": False, "error": err.strerror}
    return {"writable": True}


def statvfs(path: str) -> object:
    result = os.statvfs(path)
    return {"bytes": result.f_blocks * result.f_frsize, "free": result.f_bavail * result.f_frsize}


def _interface_ioctl(sock: socket.socket, request: int, name: str) -> str:
    packed = struct.pack("256s", name.encode()[:15])
    try:
        answer = fcntl.ioctl(sock.fileno(), request, packed)
    except OSError:
        return ""
    return socket.inet_ntoa(answer[20:24])


def _default_gateway() -> str:
    with open("/proc/net/route") as routes:
        for line in routes.readlines()[1:]:
            fields = line.split()
            if fields[1] == "00000000" and fields[7] == "00000000":
                return socket.inet_ntoa(struct.pack("<I", int(fields[2], 16)))
    return ""


def net(_: str) -> object:
    interfaces = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for name in sorted(os.listdir("/sys/class/net")):
            interfaces[name] = {
                "address": _interface_ioctl(sock, SIOCGIFADDR, name),
                "mask": _interface_ioctl(sock, SIOCGIFNETMASK, name),
            }
    return {"interfaces": interfaces, "gateway": _default_gateway()}


def _first_nameserver() -> str:
    with open("/etc/resolv.conf") as resolv:
        for line in resolv:
            words = line.split()
            if words[:1] == ["nameserver"] and len(words) > 1:
                return words[1]
    return ""


def dns(server: str) -> object:
    """Whether a DNS server answers on ``server`` (default: resolv.conf's first) port 53."""
    server = server or _first_nameserver()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(DNS_TIMEOUT)
        try:
            sock.connect((server, 53))
            sock.send(DNS_QUERY)
            answer = sock.recv(512)
        except OSError as err:
            return {"server": server, "answered": False, "error": err.strerror or str(err)}
    return {"server": server, "answered": answer[:2] == DNS_QUERY[:2], "rcode": answer[3] & 0x0F}


def print_text(text: str) -> object:
    print(text, flush=True)
    return None


def sleep(seconds: str) -> object:
    time.sleep(float(seconds))
    return None


def touch(path: str) -> object:
    with open(path, "w"):
        pass
    return time.monotonic()


def listen(port: str) -> object:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", int(port)))
    server.listen(8)
    _listeners.append(server)
    return time.monotonic()


def accept(_: str) -> object:
    connection, _address = _listeners[-1].accept()
    connection.close()
    return time.monotonic()


def exit_with(status: str) -> object:
    sys.exit(int(status))


def on_term(path: str) -> object:
    os.makedirs(os.path.dirname(path), exist_ok=True)

    def save(signum: int, frame: FrameType | None) -> None:
        with open(path, "w") as handle:
            handle.write(SAVED_TEXT)
            handle.flush()
            os.fsync(handle.fileno())
        report("saved", path, signal.Signals(signum).name)
        sys.exit(0)

    signal.signal(signal.SIGTERM, save)
    return None


def wait(_: str) -> object:
    while True:
        signal.pause()


STEPS: dict[str, Callable[[str], object]] = {
    "as": tag,
    "ids": ids,
    "caps": caps,
    "hostname": hostname,
    "env": env,
    "clock": clock,
    "read": read,
    "sysctl": sysctl,
    "writable": writable,
    "statvfs": statvfs,
    "dns": dns,
    "net": net,
    "print": print_text,
    "sleep": sleep,
    "touch": touch,
    "listen": listen,
    "accept": accept,
    "exit": exit_with,
    "on-term": on_term,
    "wait": wait,
}
SILENT = frozenset({"as", "print", "sleep", "exit", "wait"})


def main(argv: list[str]) -> int:
    for word in argv:
        verb, _sep, operand = word.partition(":")
        value = STEPS[verb](operand)
        if verb not in SILENT:
            report(verb, operand, value)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
