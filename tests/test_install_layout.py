"""InstallLayout's paths and the installer's reading of wheel metadata (no venvs: fast)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.update.installer import InstallError, _satisfies, parse_wheel, requirements
from agent.update.layout import InstallLayout


def test_every_path_is_under_the_prefix() -> None:
    root = InstallLayout()
    assert root.release("1.2.3") == Path("/opt/edge-agent/releases/1.2.3")
    assert root.current == Path("/opt/edge-agent/current")
    assert root.previous == Path("/opt/edge-agent/previous")
    assert root.bin_link == Path("/usr/bin/edge-agent")
    assert root.bin_target == Path("/opt/edge-agent/current/bin/edge-agent")
    assert root.config == Path("/etc/edge-agent/config.yaml")
    assert root.credentials_dir == Path("/etc/edge-agent/credentials")
    assert root.state_dir == Path("/var/lib/edge-agent")
    assert root.runtime_dir == Path("/run/edge-agent")
    assert root.wheelhouse == Path("/usr/lib/edge-agent/wheelhouse")
    under = InstallLayout(Path("/tmp/t"))
    assert under.current == Path("/tmp/t/opt/edge-agent/current")
    assert under.bin_link == Path("/tmp/t/usr/bin/edge-agent")


def test_requirements_leave_out_extras_and_keep_pins() -> None:
    metadata = (
        "Metadata-Version: 2.4\n"
        "Name: edge-agent\n"
        "Requires-Dist: pymodbus==3.16.1\n"
        "Requires-Dist: Pydantic_Core==2.50.4\n"
        'Requires-Dist: cffi>=2.0.0; platform_python_implementation != "PyPy"\n'
        'Requires-Dist: pytest==9.0.3; extra == "dev"\n'
        "Provides-Extra: dev\n"
        "\n"
        "Requires-Dist: not-a-header==1\n"
    )
    assert requirements(metadata) == [
        ("pymodbus", "==3.16.1"),
        ("pydantic-core", "==2.50.4"),
        ("cffi", ">=2.0.0"),
    ]


def test_pins_and_wheel_names() -> None:
    assert _satisfies("3.16.1", "==3.16.1")
    assert not _satisfies("3.16.2", "==3.16.1")
    assert _satisfies("1.2.7", "==1.2.*")
    assert _satisfies("2.1.1", ">=2.0.0")
    wheel = parse_wheel(Path("pydantic_core-2.50.4-cp311-cp311-manylinux2014_x86_64.whl"))
    assert (wheel.name, wheel.version) == ("pydantic-core", "2.50.4")
    with pytest.raises(InstallError) as bad:
        parse_wheel(Path("notawheel.whl"))
    assert bad.value.code == 2
