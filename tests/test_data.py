"""agent.data: the release's data files, found from the checkout (the wheel: test_installer)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.data import DEMO_CONFIG, EXAMPLE_CONFIG, data_path

ROOT = Path(__file__).resolve().parent.parent


def test_data_files_are_found_and_the_root_links_lead_to_them() -> None:
    assert data_path("demo.yaml") == DEMO_CONFIG == data_path("config/demo.yaml")
    assert data_path("example.yaml") == EXAMPLE_CONFIG
    assert data_path("systemd/edge-agent.service").is_file()
    assert data_path("README.md").read_text() == (ROOT / "README.md").read_text()
    assert (ROOT / "config" / "demo.yaml").resolve() == DEMO_CONFIG.resolve()
    assert (ROOT / "systemd" / "rollback").resolve() == data_path("systemd/rollback").resolve()


def test_a_missing_file_says_which() -> None:
    with pytest.raises(FileNotFoundError, match=r"nothing\.yaml"):
        data_path("nothing.yaml")
