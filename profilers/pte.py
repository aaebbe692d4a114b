"""What an ExecuTorch program (``.pte``) looks like from outside, checked before
anything loads it: a flatbuffer whose root offset (bytes 0..3) points inside
the file, the file identifier ``ET`` and two digits at bytes 4..7, and, where
present, an extended header (``eh00`` at bytes 8..11) whose program size and
segment offset lie within the file. No torch or executorch is imported here,
so a board's agent refuses a bad upload before it reaches the runtime."""
from __future__ import annotations

import struct

IDENTIFIER = b"ET"
EXTENDED_HEADER = b"eh00"
MAX_BYTES = 1 << 31


def pte_problem(data: bytes) -> str | None:
    """Why ``data`` is not an ExecuTorch program, or None when it looks like one."""
    if not isinstance(data, (bytes, bytearray)) or len(data) < 16:
        return "it is shorter than a program's header"
    if len(data) > MAX_BYTES:
        return "it is over 2 GiB"
    if data[4:6] != IDENTIFIER or not data[6:8].isdigit():
        return "it has no 'ET' file identifier at byte 4"
    (root,) = struct.unpack_from("<I", data, 0)
    if not 8 <= root < len(data):
        return "its flatbuffer root offset points outside the file"
    if data[8:12] == EXTENDED_HEADER and len(data) >= 32:
        size, program_size, segment_offset = struct.unpack_from("<IQQ", data, 12)
        if program_size > len(data) or segment_offset > len(data) or size < 20:
            return "its extended header gives sizes beyond the file"
    return None


def is_pte(data: bytes) -> bool:
    return pte_problem(data) is None
