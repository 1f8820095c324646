"""Browser tests: Debian's Chromium, driven by Playwright, against the real demo server.

The demo server runs as a subprocess (``examples/demo/server.py``) serving the built page
(``examples/demo/web/build``). The page is built first when it is missing or older than its
sources. Outside CI, a machine without Chromium or Node skips these tests; in CI (``CI`` set)
they fail instead, so a missing install step can't hide.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "examples" / "demo" / "web"
BUILD_INDEX = WEB / "build" / "index.html"
SERVER = ROOT / "examples" / "demo" / "server.py"
# The screenshot of the page goes to test-artifacts/ (ignored by git) on every run, and over
# the one in the docs only when asked: PROGRESSQ_UPDATE_SCREENSHOT=1.
SCREENSHOT = ROOT / "test-artifacts" / "demo.png"
DOCS_SCREENSHOT = ROOT / "docs" / "assets" / "demo.png"


def update_docs_screenshot() -> bool:
    return os.environ.get("PROGRESSQ_UPDATE_SCREENSHOT") == "1"


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]

pytestmark = pytest.mark.browser


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def _page_sources() -> Iterator[Path]:
    for folder in ("src", "static"):
        yield from (p for p in (WEB / folder).rglob("*") if p.is_file())
    for name in ("package.json", "package-lock.json", "svelte.config.js", "vite.config.ts", "tsconfig.json"):
        yield WEB / name


def _page_is_stale() -> bool:
    if not BUILD_INDEX.exists():
        return True
    built = BUILD_INDEX.stat().st_mtime
    return any(p.stat().st_mtime > built for p in _page_sources() if p.exists())


@pytest.fixture(scope="session")
def built_page() -> Path:
    """The page's build, made (``npm ci`` if needed, ``npm run build``) when missing or stale."""
    if _page_is_stale():
        npm = shutil.which("npm")
        if npm is None:
            _unavailable("the demo page is not built and npm is not installed")
            raise AssertionError("unreachable")
        if not (WEB / "node_modules").is_dir():
            subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=WEB, check=True)
        subprocess.run([npm, "run", "build"], cwd=WEB, check=True)
    assert BUILD_INDEX.exists()
    return BUILD_INDEX.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds the listening socket of 127.0.0.1:``port`` (Linux)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "0A" and int(local.rpartition(":")[2], 16) == port:
            inodes.add(f"socket:[{inode}]")
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(fd) in inodes:
                return True
    return False


class DemoServer:
    """``examples/demo/server.py`` as a subprocess on a fixed port; can be stopped and started again."""

    def __init__(self, port: int, log_dir: Path, framework: str = "starlette") -> None:
        self.port = port
        self.framework = framework
        self.url = f"http://127.0.0.1:{port}"
        self._log_dir = log_dir
        self._process: subprocess.Popen[bytes] | None = None
        self._runs = 0

    def start(self, timeout: float = 30.0) -> None:
        assert self._process is None, "already running"
        self._runs += 1
        log = (self._log_dir / f"server-{self._runs}.log").open("wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("PROGRESSQ_SECRET", None)  # like a newcomer's first run: ids die with the process
        command = [sys.executable, str(SERVER), "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--framework", self.framework, "--backend", "memory", "--log-level", "warning"]
        self._process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"the demo server exited with {self._process.returncode}: {self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as answer:
                    # the port is chosen before the process binds it: another test's server
                    # may have taken it meanwhile, and its answer is not this server's
                    if answer.status == 200 and _listens(self._process.pid, self.port):
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the demo server did not answer /health in {timeout} s: {self.log()}")

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server: ``kill`` as a crash would, else gracefully (then killed if it hangs)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-4000:] for p in sorted(self._log_dir.glob("server-*.log")))


@pytest.fixture
def demo_framework() -> str:
    """The adapter the demo server runs on; tests parametrize it to cover both."""
    return "starlette"


@pytest.fixture
def demo_server(built_page: Path, tmp_path: Path, demo_framework: str) -> Iterator[DemoServer]:
    if not (SERVER.parent / f"demo_{demo_framework}.py").exists():
        pytest.skip(f"the demo has no {demo_framework} app")
    for attempt in range(3):  # a free port may be taken by another test before the server binds it
        server = DemoServer(free_port(), tmp_path, demo_framework)
        try:
            server.start()
            break
        except RuntimeError as exc:
            if attempt == 2 or "address already in use" not in str(exc).lower():
                raise
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium per test module.

    Not per session: while Playwright's sync API is open its event loop counts as the
    running one, and the async tests of other modules could not start theirs.
    """
    executable = shutil.which("chromium")
    if executable is None:
        _unavailable("Chromium is not installed (Debian: apt-get install chromium)")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed")
        raise
    # Assertions wait as long as actions do: expect's own default (5 s) is a short fixed wait
    # that a page on a busy machine overran (a task item appearing after a click).
    expect.set_options(timeout=15_000)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def new_page(browser: Any, demo_server: DemoServer) -> Iterator[Any]:
    """Opens the demo page in a fresh browser context (a new tab with its own sessionStorage).

    ``init_scripts`` run before the page's own scripts on every load of the tab (a reload too).
    Any uncaught script error on a page fails the test.
    """
    contexts: list[Any] = []
    errors: list[str] = []

    def open_page(width: int = 1280, height: int = 900, init_scripts: Sequence[str] = ()) -> Any:
        context = browser.new_context(viewport={"width": width, "height": height})
        context.set_default_timeout(15_000)
        contexts.append(context)
        for script in init_scripts:
            context.add_init_script(script)
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(demo_server.url + "/")
        return page

    yield open_page
    for context in contexts:
        with contextlib.suppress(Exception):
            context.close()
    assert errors == [], f"script errors on the page: {errors}"


@pytest.fixture
def page(new_page: Any) -> Any:
    return new_page()
