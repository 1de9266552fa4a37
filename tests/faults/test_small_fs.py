"""The small file system the fault tests fill: a real ENOSPC, and space that comes back."""

from __future__ import annotations

import errno

import pytest

from tests.faults.conftest import SmallFs


def test_filled_small_fs_refuses_writes_with_enospc_until_released(small_fs: SmallFs) -> None:
    small_fs.fill()
    with pytest.raises(OSError, match="No space left") as caught:
        (small_fs.path / "one-more").write_bytes(b"x" * 65536)
    assert caught.value.errno == errno.ENOSPC
    small_fs.release()
    (small_fs.path / "one-more").write_bytes(b"x" * 65536)
    assert small_fs.free_bytes() > small_fs.size // 2
