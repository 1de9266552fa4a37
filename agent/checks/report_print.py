"""The inspection report on paper: its HTML printed to PDF by headless Chromium.

Chromium rather than a PDF library: Debian's `chromium` package prints the report's A4 `@page`
CSS and inline SVG as a browser shows them, offline, and adds nothing to the agent's own
dependencies (WeasyPrint would bring Pango and half a dozen wheels to every gateway for a file
printed now and then). It is optional: without it `--format pdf` says how to install it. Each
run gets a fresh temporary profile and a deadline; as root Chromium needs `--no-sandbox`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from agent.storage.atomic import write_atomic

BROWSERS = ("chromium", "chromium-browser")  # Debian's name, and Ubuntu's
INSTALL_HINT = "apt-get install chromium"
PRINT_TIMEOUT = 60.0  # s: a report prints in about two seconds


class PrintError(Exception):
    """The report could not be printed (no Chromium, or Chromium failed): a one-line reason."""


def find_chromium() -> Path | None:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


def headless(
    browser: Path, target: str, *options: str, timeout: float = PRINT_TIMEOUT
) -> subprocess.CompletedProcess[bytes]:
    """Run headless Chromium on `target` (a file:// URL) with `options` (--print-to-pdf=…,
    --screenshot=…, --dump-dom), in a temporary profile; raises PrintError past `timeout`."""
    with tempfile.TemporaryDirectory(prefix="edge-agent-chromium-") as profile:
        command = [
            str(browser),
            "--headless",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            f"--user-data-dir={profile}",
            *(["--no-sandbox"] if os.geteuid() == 0 else []),
            *options,
            target,
        ]
        try:
            return subprocess.run(command, capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise PrintError(f"{browser} did not finish within {timeout:g}s") from None
        except OSError as exc:
            raise PrintError(f"cannot run {browser}: {exc.strerror or exc}") from exc


def print_pdf(html: str, out: Path, *, timeout: float = PRINT_TIMEOUT) -> None:
    """Print the report's HTML to the PDF file `out` (written atomically)."""
    browser = find_chromium()
    if browser is None:
        raise PrintError(f"a PDF is printed by Chromium, which is not installed: {INSTALL_HINT}")
    with tempfile.TemporaryDirectory(prefix="edge-agent-report-") as work:
        page, pdf = Path(work) / "report.html", Path(work) / "report.pdf"
        page.write_text(html, encoding="utf-8")
        done = headless(
            browser,
            page.as_uri(),
            f"--print-to-pdf={pdf}",
            "--no-pdf-header-footer",
            timeout=timeout,
        )
        if done.returncode != 0 or not pdf.is_file() or pdf.stat().st_size == 0:
            said = done.stderr.decode(errors="replace").strip().splitlines()
            reason = said[-1] if said else f"exit status {done.returncode}"
            raise PrintError(f"{browser} could not print the report: {reason}")
        write_atomic(out, pdf.read_bytes())
