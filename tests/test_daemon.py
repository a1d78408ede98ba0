"""
The real daemon: C{twistd -n callnet} in a subprocess, spoken to over a
loopback socket exactly as a person at nc or telnet would.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import threading
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest

from .daemon import LineClient, accepts, free_port, is_reply, running_node, wait_until

README = Path(__file__).parent.parent / "README.md"


def blocks_of(document: Path, kind: str) -> dict[str, str]:
    """The fenced blocks of a document that follow a C{<!-- kind: name -->} marker."""
    pattern = re.compile(rf"<!-- {kind}: (\S+) -->\n```\w*\n(.*?)```", re.S)
    return {name: body for name, body in pattern.findall(document.read_text())}


def readme_blocks(kind: str) -> dict[str, str]:
    """The fenced blocks of README.md that follow a C{<!-- kind: name -->} marker."""
    return blocks_of(README, kind)


def replay(client: LineClient, transcript: str) -> None:
    """
    Type each request of a transcript and check the node's lines against it.

    A transcript may start with the C{nc} command that opens it; the rest are
    requests, each followed by the lines that answer it.  The lines must be
    exactly those shown, but for what cannot repeat from run to run (a trace
    id the node made up, where the docs say "for example"): see L{normal};
    and a line the doc cuts short with C{...} (saying so) matches any text
    in their place.
    """
    lines = transcript.splitlines()
    if lines and lines[0].startswith("$ "):
        assert lines[0].startswith("$ nc "), "a transcript starts with the nc command"
        lines = lines[1:]
    steps: list[tuple[str, list[str]]] = []
    for line in lines:
        if is_reply(line):
            assert steps, f"a reply before any request: {line!r}"
            steps[-1][1].append(line)
        else:
            steps.append((line, []))
    for request, expected in steps:
        client.send(request)
        actual = [client.read_line() for _ in expected]
        assert shown_as(actual, expected), f"after {request!r}: {actual!r}"


#: A W3C traceparent made up by a node: random, so shown "for example".
_TRACEPARENT = re.compile(r"\[trace 00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]\]$")


def shown_as(actual: list[str], expected: list[str]) -> bool:
    """Whether a node's lines are those a doc shows (see L{replay})."""
    if len(actual) != len(expected):
        return False
    for line, shown in zip(actual, expected, strict=True):
        pattern = ".*".join(re.escape(normal(part)) for part in shown.split("..."))
        if not re.fullmatch(pattern, normal(line)):
            return False
    return True


def normal(line: str) -> str:
    """
    A reply line with what differs from run to run hidden: a traceparent at
    its end (a node's own is random).  Everything else, the node's name
    included, must be as the docs show it.
    """
    return _TRACEPARENT.sub("[trace 00-TRACE-PARENT-FLAGS]", line)


def test_conversation_and_clean_stop(tmp_path: Path) -> None:
    """Help, a call, an error and a bad line over a raw socket; then SIGTERM stops the node within 5 s."""
    with running_node(tmp_path) as node:
        client = node.connect()
        client.send("HELP")
        help_reply = client.read_reply()
        assert help_reply[-1] == "OK"
        assert any(line.startswith("| add(a: float, b: float)") for line in help_reply)
        client.send("add 40 2")
        assert client.read_line() == "OK 42"
        client.send("nosuch 1")
        assert client.read_line().startswith("ERR NOT_FOUND not-run @demo ")
        client.send(b"add \xfe\xfe")
        assert client.read_line().startswith("ERR INVALID_ARGUMENT not-run")
        client.send("#9 +bogus add 1 2")
        assert client.read_line().startswith("#9 ERR INVALID_ARGUMENT not-run")
        client.send("PING")
        assert client.read_line() == 'OK "pong"'
        client.send("QUIT")
        assert client.read_line() == 'OK "bye"'
        assert client.closed_by_peer()

        started = time.monotonic()
        status = node.terminate(timeout=5)
        assert time.monotonic() - started < 5
        # twistd re-raises SIGTERM after its clean shutdown.
        assert status in (-15, 143), node.output()
        assert "Traceback" not in node.output()
        assert "Server Shut Down." in node.output()


def test_http_request_refused(tmp_path: Path) -> None:
    """A browser's request gets one error line and the connection closes; the node serves on."""
    with running_node(tmp_path) as node:
        client = node.connect()
        client.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert "not an HTTP server" in client.read_line()
        assert client.closed_by_peer()
        other = node.connect()
        other.send("add 1 1")
        assert other.read_line() == "OK 2"


def test_oversized_line_over_socket(tmp_path: Path) -> None:
    """A line past the limit fails that request only; the same connection then works."""
    with running_node(tmp_path, "--max-line-bytes", "1000") as node:
        client = node.connect()
        client.send(b"#1 echo " + b"x" * 100_000)
        assert client.read_line().startswith("#1 ERR RESOURCE_EXHAUSTED not-run")
        client.send("#2 add 1 2")
        assert client.read_line() == "#2 OK 3"


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc for RSS")
def test_client_that_never_reads(tmp_path: Path) -> None:
    """A client flooding requests without reading is paused then dropped; others are served and memory stays bounded."""
    with running_node(tmp_path, "--write-stall-timeout", "1") as node:
        before = _rss_kib(node.process.pid)
        flooder = socket.create_connection((node.host, node.port))
        flooder.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        request = b"echo " + b'"' + b"y" * 50_000 + b'"\n'
        sent = 0
        stop = threading.Event()

        def flood() -> None:
            nonlocal sent
            flooder.settimeout(0.5)
            try:
                while not stop.is_set() and sent < 2000:
                    flooder.sendall(request)
                    sent += 1
            except OSError:
                pass  # the node stopped reading (timeout) or dropped us (reset)

        thread = threading.Thread(target=flood, daemon=True)
        thread.start()
        thread.join(timeout=30)
        stop.set()
        assert sent < 2000, "the node kept reading from a client that never reads"

        other = node.connect()
        other.send("PING")
        assert other.read_line() == 'OK "pong"'

        # The flooder is dropped once its replies stay unread past the stall limit.
        flooder.settimeout(10)
        dropped = False
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline:
                if not flooder.recv(1 << 20):
                    dropped = True
                    break
        except ConnectionResetError:
            dropped = True
        assert dropped
        grown_mib = (_rss_kib(node.process.pid) - before) / 1024
        assert grown_mib < 100, f"node grew by {grown_mib:.0f} MiB"
        other.send("add 2 2")
        assert other.read_line() == "OK 4"


@pytest.mark.parametrize("how", ["close", "reset", "close with lines unread"])
def test_client_gone_at_the_call_limit(tmp_path: Path, how: str) -> None:
    """A client that leaves while the node is not reading it (calls at the limit) has its calls cancelled and its slot freed."""
    with running_node(tmp_path, "--max-calls-in-flight", "20") as node:
        leaver = socket.create_connection((node.host, node.port))
        leaver.sendall(b"".join(b"#%d sleep 60\n" % number for number in range(20)))
        wait_until(
            lambda: node.stats()["in_flight"] == 20, 10, "the node took up the calls to its limit"
        )
        if how == "reset":
            leaver.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif how == "close with lines unread":
            leaver.sendall(b"".join(b"#%d sleep 60\n" % number for number in range(20, 25)))
        leaver.close()

        # Only the node's reading of the kernel's socket shows this: not read
        # for its calls, the connection would otherwise be kept to their end.
        def let_go() -> bool:
            stats = node.stats()
            # Its calls ended, and only the connection asking is left.
            return bool(stats["in_flight"] == 0 and stats["connections"] == 1)

        wait_until(let_go, 10, "the calls and the connection of a client that left ended")


def test_second_node_on_another_loopback_address(tmp_path: Path) -> None:
    """Two nodes run side by side on 127.0.0.1 and 127.0.0.2, each with its own name."""
    try:
        free_port("127.0.0.2")
    except OSError:
        pytest.skip("127.0.0.2 is not usable here")
    with (
        running_node(tmp_path, name="alpha") as alpha,
        running_node(tmp_path, host="127.0.0.2", name="beta") as beta,
    ):
        for node, name in ((alpha, "alpha"), (beta, "beta")):
            client = node.connect()
            client.send("nosuch")
            assert client.read_line().startswith(f"ERR NOT_FOUND not-run @{name} ")


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """Write a throwaway key and self-signed certificate for 127.0.0.1."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = tmp_path / "node.key", tmp_path / "node.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def test_unix_and_tls_listeners(tmp_path: Path) -> None:
    """One node serves the same protocol on TCP, a unix socket and TLS at once."""
    import ssl

    key, cert = _self_signed(tmp_path)
    tls_port = free_port()
    sock_path = tmp_path / "node.sock"
    with running_node(
        tmp_path,
        "--listen",
        f"unix:{sock_path}",
        "--listen",
        f"ssl:{tls_port}:interface=127.0.0.1:privateKey={key}:certKey={cert}",
    ) as node:
        unix = socket.socket(socket.AF_UNIX)
        unix.connect(str(sock_path))
        client = LineClient(unix)
        client.send("add 1 2")
        assert client.read_line() == "OK 3"

        context = ssl.create_default_context(cafile=str(cert))
        raw = socket.create_connection(("127.0.0.1", tls_port), timeout=10)
        tls = LineClient(context.wrap_socket(raw, server_hostname="127.0.0.1"))
        tls.send("#1 echo secret")
        assert tls.read_line() == '#1 OK "secret"'
        assert node.process.poll() is None


def test_daemonized_with_pidfile_and_logfile(tmp_path: Path) -> None:
    """Without -n, twistd daemonizes: the pid file names a node that serves, and SIGTERM removes it."""
    import os
    import signal
    import subprocess

    from .daemon import TWISTD, require_twistd, wait_until

    require_twistd()
    port = free_port()
    pidfile, logfile = tmp_path / "twistd.pid", tmp_path / "twistd.log"
    started = subprocess.run(
        [
            str(TWISTD),
            f"--pidfile={pidfile}",
            f"--logfile={logfile}",
            "callnet",
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
        ],
        cwd=tmp_path,
        timeout=30,
        capture_output=True,
    )
    assert started.returncode == 0, started.stderr
    assert pidfile.exists()
    pid = int(pidfile.read_text())
    try:

        def accepts() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                return False
            return True

        wait_until(accepts, 20, "the daemon listens")
        client = LineClient(socket.create_connection(("127.0.0.1", port), timeout=10))
        client.send("PING")
        assert client.read_line() == 'OK "pong"'
        os.kill(pid, signal.SIGTERM)
        assert client.read_line().startswith("BYE "), "a stopping node says BYE last"
        client.sock.shutdown(socket.SHUT_WR)
        assert client.closed_by_peer(timeout=5)
        wait_until(lambda: not pidfile.exists(), 5, "twistd removes its pid file")
        assert "Main loop terminated." in logfile.read_text()
    finally:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_half_close_like_printf_into_nc(tmp_path: Path) -> None:
    """Requests piped in and followed by end of input (printf ... | nc) are all answered."""
    with running_node(tmp_path) as node:
        sock = socket.create_connection((node.host, node.port), timeout=10)
        sock.sendall(b"add 1 2\nsleep 0.2\nPING\n")
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
        assert received.splitlines() == [b"OK 3", b"OK 0.2", b'OK "pong"']


NESTED_SERVICE = '''
from callnet import procedure
from callnet.context import CallContext


@procedure
def total(numbers: list, context: CallContext) -> float:
    """Sum numbers by calling add, from a worker thread."""
    result = 0
    for number in numbers:
        result = context.call_blocking("add", result, number)
    return result


@procedure
def patient(context: CallContext) -> str:
    """Wait on a nested call longer than our own deadline allows."""
    return context.call_blocking("sleep", 30)
'''


def test_nested_calls_from_a_thread_and_multicall(tmp_path: Path) -> None:
    """A thread procedure calls others through its context, within its deadline; multicall answers per node."""
    (tmp_path / "nested.py").write_text(NESTED_SERVICE)
    with running_node(tmp_path, "--service", "nested") as node:
        client = node.connect()
        client.send("#1 total [1,2,3.5]")
        assert client.read_line() == "#1 OK 6.5"
        started = time.monotonic()
        client.send("#2 +timeout=0.5 patient")
        assert client.read_line().startswith("#2 ERR DEADLINE_EXCEEDED may-have-run")
        assert time.monotonic() - started < 2
        client.send("#3 STATS")
        stats = json.loads(client.read_line().split(" ", 2)[2])
        assert stats["procedures"]["sleep"]["in_flight"] == 0, "the nested sleep was cancelled"
        client.send("#4 multicall add [1,2]")
        assert client.read_line() == '#4 OK {"demo":{"ok":3}}'


def test_sigterm_drains(tmp_path: Path) -> None:
    """On SIGTERM a node stops listening, lets a call in flight finish, cancels what outlives the grace, says BYE, and exits."""
    import signal

    with running_node(tmp_path, "--shutdown-grace", "2") as node:
        client = node.connect()
        client.send("#1 sleep 0.5")
        client.send("#2 sleep 30")
        wait_until(lambda: node.stats()["in_flight"] == 2, 5, "both calls run")
        started = time.monotonic()
        node.process.send_signal(signal.SIGTERM)
        assert client.read_line() == "#1 OK 0.5", "the short call finished during the drain"
        wait_until(lambda: not accepts(node.host, node.port), 5, "the listener closes")
        last = client.read_line()
        assert last.startswith("#2 ERR UNAVAILABLE may-have-run"), last
        assert "shut down" in last
        assert 1.5 < time.monotonic() - started < 5
        # The last line: nothing read after it runs, so #3 is never answered.
        assert client.read_line() == 'BYE "demo is shutting down"'
        client.send("#3 echo late")
        client.sock.shutdown(socket.SHUT_WR)  # as the clients do after BYE
        assert client.closed_by_peer(), "the node closes once its client has, writing nothing"
        assert node.process.wait(timeout=5) in (-15, 143)
        assert "Traceback" not in node.output()


def test_reload_on_sighup(tmp_path: Path) -> None:
    """SIGHUP applies a changed service module and access rules; an invalid config is refused and the old one stays."""
    import signal

    (tmp_path / "menu.py").write_text(
        "from callnet import procedure\n\n@procedure(run='reactor')\ndef soup() -> str:\n"
        "    return 'tomato'\n"
    )
    config = tmp_path / "node.toml"
    config.write_text('[node]\nservices = ["menu"]\n')
    with running_node(tmp_path, "--config", str(config)) as node:
        client = node.connect()
        assert client.request("soup") == 'OK "tomato"'
        (tmp_path / "menu.py").write_text(
            "from callnet import procedure\n\n@procedure(run='reactor')\ndef soup() -> str:\n"
            "    return 'leek'\n\n@procedure(run='reactor')\ndef bread() -> str:\n"
            "    return 'rye'\n"
        )
        config.write_text('[node]\nservices = ["menu"]\n[acl]\n"*" = ["soup", "bread", "add"]\n')
        node.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "reloaded:" in node.output(), 10, "the node reloads")
        assert client.request("soup") == 'OK "leek"'
        assert client.request("bread") == 'OK "rye"'
        assert client.request("echo no").startswith("ERR PERMISSION_DENIED not-run")
        config.write_text('[node]\nservices = ["menu"]\nthreads = "many"\n')
        node.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload refused" in node.output(), 10, "the node refuses the reload")
        assert "threads" in node.output().split("reload refused", 1)[1]
        assert client.request("bread") == 'OK "rye"'
        assert "Traceback" not in node.output()


def test_reload_revokes_a_removed_token(tmp_path: Path) -> None:
    """SIGHUP that removes a token refuses the next call of a connection authenticated with it, and logs why."""
    import signal

    alice, ops = "alice-token-0123456789", "ops-token-9876543210ab"
    config = tmp_path / "node.toml"
    config.write_text(f'[security]\ntokens = {{ alice = "{alice}", ops = "{ops}" }}\n')
    with running_node(tmp_path, "--config", str(config)) as node:
        client = node.connect()
        assert client.request(f"AUTH {alice}") == 'OK "alice"'
        assert client.request("add 1 2") == "OK 3"
        config.write_text(f'[security]\ntokens = {{ ops = "{ops}" }}\n')
        node.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "reloaded:" in node.output(), 10, "the node reloads")
        assert client.request("add 1 2").startswith("ERR UNAUTHENTICATED not-run")
        assert "removed by a reload" in node.output()
        assert client.request(f"AUTH {alice}").startswith("ERR UNAUTHENTICATED")


def test_sighup_without_config_file_reloads(tmp_path: Path) -> None:
    """SIGHUP to a node started without --config reloads its service modules; it is not fatal."""
    import signal

    (tmp_path / "menu.py").write_text(
        "from callnet import procedure\n\n@procedure(run='reactor')\ndef soup() -> str:\n"
        "    return 'tomato'\n"
    )
    with running_node(tmp_path, "--service", "menu") as node:
        client = node.connect()
        assert client.request("soup") == 'OK "tomato"'
        (tmp_path / "menu.py").write_text(
            "from callnet import procedure\n\n@procedure(run='reactor')\ndef soup() -> str:\n"
            "    return 'leek'\n"
        )
        node.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "reloaded:" in node.output(), 10, "the node reloads")
        assert node.process.poll() is None, "SIGHUP ended the node"
        assert client.request("soup") == 'OK "leek"'
        assert node.terminate() in (-signal.SIGTERM, 128 + signal.SIGTERM)
        assert "Traceback" not in node.output()


BLOCKING = """\
import threading

from callnet import procedure


@procedure
def sleep_blocking() -> str:
    \"\"\"Block a worker thread for 30 s, deaf to cancellation.\"\"\"
    threading.Event().wait(30)
    return "woke"
"""


def test_sigterm_does_not_wait_for_a_blocked_thread(tmp_path: Path) -> None:
    """SIGTERM ends the node within shutdown_grace + STOP_MARGIN though a thread procedure ignores cancellation, and the log names it."""
    import signal

    from callnet.node import STOP_MARGIN

    grace = 1.0
    (tmp_path / "blocking.py").write_text(BLOCKING)
    with running_node(tmp_path, "--service", "blocking", "--shutdown-grace", str(grace)) as node:
        client = node.connect()
        client.send("#1 sleep_blocking")
        wait_until(lambda: node.stats()["in_flight"] == 1, 5, "the call runs")
        started = time.monotonic()
        node.process.send_signal(signal.SIGTERM)
        status = node.process.wait(timeout=grace + STOP_MARGIN + 10)
        took = time.monotonic() - started
        assert status in (-signal.SIGTERM, 128 + signal.SIGTERM)
        assert took < grace + STOP_MARGIN, f"SIGTERM took {took:.1f}s"
        assert client.read_line().startswith("#1 ERR UNAVAILABLE may-have-run")
        output = node.output()
        assert "abandoning 1 thread procedure still running: sleep_blocking" in output, output
        assert "Traceback" not in output


def test_ssl_listener_has_the_nodes_tls_rules(tmp_path: Path) -> None:
    """Twisted's ssl: listener, too, offers only AEAD suites on TLS 1.2 and accepts clients that offer ALPN."""
    import ssl

    key, cert = _self_signed(tmp_path)
    tls_port = free_port()
    with running_node(
        tmp_path, "--listen", f"ssl:{tls_port}:interface=127.0.0.1:privateKey={key}:certKey={cert}"
    ) as node:

        def connect(configure: Any) -> LineClient:
            context = ssl.create_default_context(cafile=str(cert))
            configure(context)
            raw = socket.create_connection(("127.0.0.1", tls_port), timeout=10)
            return LineClient(context.wrap_socket(raw, server_hostname="127.0.0.1"))

        def tls12(suites: str) -> Any:
            def configure(context: ssl.SSLContext) -> None:
                context.maximum_version = ssl.TLSVersion.TLSv1_2
                context.set_ciphers(suites)

            return configure

        with pytest.raises(ssl.SSLError, match="HANDSHAKE_FAILURE"):
            connect(tls12("ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA"))
        aead = connect(tls12("ECDHE-ECDSA-AES128-GCM-SHA256"))
        aead.send("#1 add 1 2")
        assert aead.read_line() == "#1 OK 3"
        alpn = connect(lambda context: context.set_alpn_protocols(["h2", "http/1.1"]))
        alpn.send("add 1 2")
        assert alpn.read_line() == "OK 3"
        assert node.process.poll() is None
