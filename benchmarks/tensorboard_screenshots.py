"""Screenshot TensorBoard's tabs for a run, as a researcher would open it (issue 13).

Starts ``tensorboard --logdir RUN_DIR`` bound to 127.0.0.1 and takes headless-Chromium
screenshots (Debian's ``chromium`` package) of Time Series (filtered to one method),
Custom Scalars, Images and HParams into ``--out``. Look at every PNG it writes.

    python benchmarks/tensorboard_screenshots.py runs/default/version_0 --out /tmp/shots

Nothing here runs in the test suite (a browser is not a test dependency): the suite checks
the same things through TensorBoard's backend (tests/test_default_run.py).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

TABS = {
    "time_series": "?tagFilter=%5Einterp%2Fsimple_grad%2F#timeseries",
    "custom_scalars": "#custom_scalars",
    "images": "#images",
    "hparams": "#hparams",
}
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars",
]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, timeout: float) -> None:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"TensorBoard did not answer at {url} within {timeout} s")


def screenshot(url: str, path: Path, size: str, budget_ms: int) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("needs Debian's chromium (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size}",
               f"--virtual-time-budget={budget_ms}", f"--screenshot={path}", url]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--out", required=True)
    parser.add_argument("--size", default="1600,1400")
    parser.add_argument("--budget-ms", type=int, default=20000, help="time the page may render")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    tb = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", args.run_dir, "--host",
         "127.0.0.1", "--port", str(port), "--reload_interval", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}/"
        _wait(base, 60)
        for name, fragment in TABS.items():
            path = out / f"{name}.png"
            screenshot(base + fragment, path, args.size, args.budget_ms)
            print(path)
    finally:
        tb.terminate()
        tb.wait(timeout=30)


if __name__ == "__main__":
    main()
