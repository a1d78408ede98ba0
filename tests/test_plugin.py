"""
Integration tests: C{twistd} finds the callnet plugin in an installed copy.

They run the C{twistd} next to the running Python from a directory outside the
checkout, so what they see is what C{pip install .} installed, not the
checkout's files.  Install first (C{.ci/run} does): C{pip install .}, not an
editable install, which hides C{twisted/plugins}.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parent.parent
# Not resolved: in a venv, sys.executable is a link whose folder holds twistd.
TWISTD = Path(sys.executable).parent / "twistd"
#: Bound on every subprocess: generous, as a cold plugin scan compiles files.
TIMEOUT = 120.0

pytestmark = pytest.mark.skipif(
    not TWISTD.exists(),
    reason=f"no twistd next to {sys.executable}: Twisted is not installed there",
)


def clean_env() -> dict[str, str]:
    """The environment without C{PYTHONPATH}, so nothing points back at the checkout."""
    return {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, capturing its output as text."""
    return subprocess.run(
        args,
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """
    A directory outside the checkout, where C{callnet} must import from an installed copy.

    Fails every test that needs one, with one clear message, if there is none.
    """
    outside = tmp_path_factory.mktemp("outside")
    result = run([sys.executable, "-c", "import callnet"], outside)
    if result.returncode != 0:
        pytest.fail(
            f"callnet is not installed for {sys.executable}: run `pip install .`"
            f" (not -e) first, as .ci/run does.\n{result.stderr}"
        )
    return outside


def test_installed_copy_imported_outside_checkout(installed: Path) -> None:
    """Outside the checkout, C{callnet} and its plugin come from site-packages."""
    result = run(
        [
            sys.executable,
            "-c",
            "import sysconfig, callnet, twisted.plugins.callnet_plugin as p;"
            " print(sysconfig.get_path('purelib')); print(callnet.__file__); print(p.__file__)",
        ],
        installed,
    )
    assert result.returncode == 0, result.stderr
    site_packages, package, plugin = (Path(line).resolve() for line in result.stdout.split())
    assert package.parent != CHECKOUT / "callnet", "callnet imported from the checkout"
    assert package.is_relative_to(site_packages), f"{package} is not in {site_packages}"
    assert plugin.is_relative_to(site_packages), f"{plugin} is not in {site_packages}"


def test_twistd_lists_plugin(installed: Path, tmp_path: Path) -> None:
    """C{twistd --help} run outside the checkout lists the callnet command."""
    result = run([str(TWISTD), "--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert re.search(r"(?m)^\s+callnet\s+Run a callnet node", result.stdout), result.stdout


def test_plugin_help_lists_options(installed: Path, tmp_path: Path) -> None:
    """C{twistd callnet --help} shows the node's options."""
    result = run([str(TWISTD), "callnet", "--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    for option in ("--listen", "--service", "--config", "--no-builtins", "--max-calls-in-flight"):
        assert option in result.stdout


def test_bad_endpoint_is_a_usage_error(installed: Path, tmp_path: Path) -> None:
    """A bad C{--listen} endpoint fails the command with a message naming it, no traceback."""
    result = run([str(TWISTD), "-n", "callnet", "--listen", "bogus:xyz"], tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert 'bad endpoint "bogus:xyz"' in output
    assert "Traceback" not in output
    assert list(tmp_path.iterdir()) == [], "a refused command should leave no pid or log file"


def test_bad_config_is_a_usage_error(installed: Path, tmp_path: Path) -> None:
    """A bad value in the config file fails the command naming the key, no traceback."""
    config = tmp_path / "bad.toml"
    config.write_text('[limits]\nmax_calls_in_flight = "ten"\n')
    result = run([str(TWISTD), "-n", "callnet", "--config", str(config)], tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert '[limits] max_calls_in_flight must be a whole number >= 1, not "ten"' in output
    assert "Traceback" not in output


def test_node_refusal_is_not_a_traceback(installed: Path, tmp_path: Path) -> None:
    """A config the node itself refuses (a module serving nothing) fails with one line."""
    result = run([str(TWISTD), "-n", "--pidfile=", "callnet", "--service", "json"], tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("twistd callnet: "), result.stderr
    assert result.stderr.count("\n") == 1 and "json" in result.stderr, result.stderr


#: Bad command lines, each with what its one line of error must say.
BAD_COMMANDS = [
    (["--threads", "x"], '--threads must be a whole number >= 1, not "x"'),
    (["--colour", "red"], "option --colour not recognized"),
    (["--pidfile", "x.pid"], "option --pidfile not recognized"),
    (["--peer", "beta=tcp:127.0.0.2"], '--peer beta: bad endpoint "tcp:127.0.0.2"'),
    (["--peer", "beta"], "--peer takes NAME=ENDPOINT"),
    (["--name", "bad name"], "--name must be a node name of letters, digits and _.-"),
    (
        ["--name", "alpha", "--peer", "alpha=tcp:127.0.0.1:7601"],
        "--peer alpha: a node cannot be its own peer",
    ),
    (["--config", "CONFIG"], '[peers] beta: bad endpoint "garbage"'),
    (["--listen", "bogus:xyz"], '--listen: bad endpoint "bogus:xyz"'),
]


@pytest.mark.parametrize(("argv", "message"), BAD_COMMANDS)
def test_configuration_error_is_one_line(
    installed: Path, tmp_path: Path, argv: list[str], message: str
) -> None:
    """Each configuration error is one line on stderr, naming the setting, with status 1 and nothing started."""
    config = tmp_path / "node.toml"
    config.write_text('[peers]\nbeta = "garbage"\n')
    argv = [str(config) if arg == "CONFIG" else arg for arg in argv]
    result = run([str(TWISTD), "-n", "--pidfile=node.pid", "callnet", *argv], tmp_path)
    assert result.returncode == 1
    assert result.stdout == "", "no usage text, no log"
    assert result.stderr.startswith("twistd callnet: "), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr
    assert list(tmp_path.iterdir()) == [config], "nothing was started"


def test_help_stays_full(installed: Path, tmp_path: Path) -> None:
    """C{twistd callnet --help} still prints every option, with status 0."""
    result = run([str(TWISTD), "callnet", "--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) > 20
    assert "--shutdown-grace" in result.stdout and "--peer" in result.stdout


@pytest.mark.parametrize(
    ("daemon", "options"),
    [(False, ""), (True, ""), (True, ":backlog=50:interface=127.0.0.1")],
    ids=["nodaemon", "daemon", "daemon-long-endpoint"],
)
def test_port_in_use(installed: Path, tmp_path: Path, daemon: bool, options: str) -> None:
    """
    A node whose port is taken exits with status 1 and one log line saying
    so, not a traceback; daemonized, the starting process says why, however
    long the endpoint (twistd passes it only 100 bytes of the reason).
    """
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        listen = f"tcp:port={port}{options}" if options else f"tcp:{port}:interface=127.0.0.1"
        twistd = ["--pidfile=node.pid", "--logfile=node.log"] if daemon else ["-n", "--pidfile="]
        result = run([str(TWISTD), *twistd, "callnet", "--listen", listen], tmp_path)
    log = (tmp_path / "node.log").read_text() if daemon else result.stdout
    assert result.returncode == 1, result.stdout + result.stderr
    said = f"cannot listen on {listen}: Address already in use"
    lines = [line for line in log.splitlines() if "cannot listen" in line]
    assert len(lines) == 1 and said in lines[0], log
    assert "serving" not in log
    assert "Traceback" not in log + result.stderr
    if daemon:
        assert "Address already in use: cannot listen on tcp:" in result.stderr, (
            "the starting process says why"
        )
        assert not (tmp_path / "node.pid").exists(), "no stale pid file"
    else:
        assert result.stderr == ""


def test_no_reactor_on_import() -> None:
    """Importing the plugin and the tap module does not install the global reactor."""
    result = run(
        [
            sys.executable,
            "-c",
            "import sys, callnet.tap, twisted.plugins.callnet_plugin;"
            " print('twisted.internet.reactor' in sys.modules)",
        ],
        CHECKOUT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_dropin_cache_not_tracked() -> None:
    """The plugin cache that twistd writes beside the plugin is ignored by git."""
    if shutil.which("git") is None or not (CHECKOUT / ".git").exists():
        pytest.skip("not a git checkout")
    cache = "twisted/plugins/dropin.cache"
    assert run(["git", "check-ignore", "-q", cache], CHECKOUT).returncode == 0
    assert run(["git", "ls-files", "--", "**/dropin.cache"], CHECKOUT).stdout == ""


def read_until(process: subprocess.Popen[bytes], marker: bytes, deadline: float) -> bytes:
    """Read C{process}'s output until it holds C{marker}; fail at C{deadline} or its exit."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    seen = b""
    while marker not in seen:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"no {marker!r} from twistd in time; it said:\n{seen.decode()}")
        readable, _, _ = select.select([fd], [], [], remaining)
        if readable:
            chunk = os.read(fd, 65536)
            if not chunk:
                pytest.fail(f"twistd exited before {marker!r}; it said:\n{seen.decode()}")
            seen += chunk
    return seen


def test_node_runs_and_stops(installed: Path, tmp_path: Path) -> None:
    """C{twistd -n callnet} serves a PING on its endpoint and exits cleanly on SIGTERM."""
    address = tmp_path / "node.sock"
    process = subprocess.Popen(
        [
            str(TWISTD),
            "-n",
            "--pidfile=",
            "callnet",
            "--name=plugin-test",
            f"--listen=unix:{address}",
        ],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        bufsize=0,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        read_until(process, b"callnet node plugin-test serving", deadline)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(TIMEOUT)
            client.connect(str(address))
            client.sendall(b"PING\n")
            reply = client.makefile("rb").readline()
        assert b"pong" in reply, reply
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=TIMEOUT)[0].decode(errors="replace")
        # twistd shuts down cleanly, then dies of the SIGTERM it caught, as
        # a supervisor expects (the shell reports 143).
        assert process.returncode in (0, -signal.SIGTERM), output
        assert "Server Shut Down." in output
        assert "Traceback" not in output, output
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_clients_load_no_server_code() -> None:
    """Importing the clients loads no dispatcher, session, cluster, worker pool, key store or TLS code."""
    probe = (
        "import sys, callnet.client, callnet.blocking\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('callnet'))))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    assert "callnet.client" in loaded and "callnet.blocking" in loaded
    server_side = {
        "callnet.dispatch",
        "callnet.server",
        "callnet.protocol",
        "callnet.session",
        "callnet.cluster",
        "callnet.workers",
        "callnet.idempotency",
        "callnet.tls",
        "callnet.node",
        "callnet.context",
    }
    assert not server_side & set(loaded), loaded
