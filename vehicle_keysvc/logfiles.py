"""Reading of CAN recordings that skips malformed lines instead of stopping.

python-can's readers stop at the first line they cannot parse (candump
``.log``), or at a bad data byte (``.asc`` and ``.trc``), so one damaged
line would end a replay. These readers wrap python-can's, skip such a line
with a warning that gives its number, and go on. A ``.blf`` file is binary:
reading stops at the first damaged object, with a warning.
"""

from __future__ import annotations

import io
import logging
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import can
from can.io.asc import ASCReader
from can.io.canutils import CanutilsLogReader
from can.io.trc import TRCReader

_LOGGER = logging.getLogger(__name__)

# Malformed lines logged one by one; later ones are only counted.
_MAX_LOGGED = 10


@dataclass
class LogStats:
    """Counts of the frames read from one recording and the lines skipped."""

    path: str
    frames: int = 0
    error_frames: int = 0
    remote_frames: int = 0
    malformed: list[int] = field(default_factory=list)  # line numbers

    def skip_line(self, number: int, line: str, err: Exception | str) -> None:
        self.malformed.append(number)
        if len(self.malformed) <= _MAX_LOGGED:
            _LOGGER.warning(
                "%s line %d is malformed (%s), skipped: %r",
                self.path, number, err, line.strip()[:120],
            )


class _CountingLines:
    """Iterates over a text file's lines and records the current line number."""

    def __init__(self, file: Any) -> None:
        self._file = file
        self.number = 0
        self.line = ""

    def __iter__(self) -> _CountingLines:
        return self

    def __next__(self) -> str:
        self.line = next(self._file)
        self.number += 1
        return self.line

    def close(self) -> None:
        self._file.close()


class _TolerantTRCReader(TRCReader):
    def __init__(self, file: TextIO, stats: LogStats) -> None:
        super().__init__(file)
        self.lines = _CountingLines(self.file)
        self.file = self.lines  # type: ignore[assignment]
        self.stats = stats

    def _parse_line(self, line: str) -> can.Message | None:
        try:
            cols = tuple(line.split(maxsplit=self._num_columns))
            return self._parse_cols(cols)
        except (IndexError, ValueError, KeyError) as err:
            self.stats.skip_line(self.lines.number, line, err or type(err).__name__)
            return None


class _TolerantASCReader(ASCReader):
    def __init__(self, file: TextIO, stats: LogStats) -> None:
        super().__init__(file)
        self.lines = _CountingLines(self.file)
        self.file = self.lines  # type: ignore[assignment]
        self.stats = stats

    def _process_classic_can_frame(self, line: str, msg_kwargs: dict[str, Any]
                                   ) -> can.Message:
        try:
            return super()._process_classic_can_frame(line, msg_kwargs)
        except (IndexError, ValueError) as err:
            self.stats.skip_line(self.lines.number, self.lines.line, err)
            return None  # type: ignore[return-value]  # the caller skips None

    def _process_fd_can_frame(self, line: str, msg_kwargs: dict[str, Any]
                              ) -> can.Message:
        try:
            return super()._process_fd_can_frame(line, msg_kwargs)
        except (IndexError, ValueError) as err:
            self.stats.skip_line(self.lines.number, self.lines.line, err)
            return None  # type: ignore[return-value]  # the caller skips None


def _read_candump(path: Path, stats: LogStats) -> Iterator[can.Message]:
    with _open_text(path) as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                # python-can parses one line at a time this way, so a bad
                # line costs that line only.
                frames = list(CanutilsLogReader(io.StringIO(line)))
            except (IndexError, ValueError) as err:
                stats.skip_line(number, line, err)
                continue
            yield from frames


def _open_text(path: Path) -> TextIO:
    # A byte that is not UTF-8 becomes U+FFFD instead of ending the file.
    # Its line is then skipped as malformed (or, in .asc, as not a frame).
    return open(path, encoding="utf-8", errors="replace")


def _read_text(path: Path, stats: LogStats, reader_type: type) -> Iterator[can.Message]:
    with _open_text(path) as file:
        yield from reader_type(file, stats)


def _read_blf(path: Path, stats: LogStats) -> Iterator[can.Message]:
    try:
        with can.BLFReader(str(path)) as reader:
            yield from reader
    except (can.io.blf.BLFParseError, struct.error, zlib.error, ValueError) as err:
        _LOGGER.warning("%s: damaged BLF data after %d frames, stopped reading: %s",
                        path, stats.frames, err)


def read_log(path: str | Path, stats: LogStats | None = None) -> Iterator[can.Message]:
    """Yield every frame of a recording, error and remote frames included.

    Reads candump ``.log``, Vector ``.asc`` and ``.blf``, and PEAK ``.trc``
    (versions 1.0 to 2.1); other formats go to ``can.LogReader`` unchanged.

    Raises:
        OSError: the file cannot be opened.
        ValueError: the format is unknown, or a header python-can needs
            (such as the TRC column list) is missing.
    """
    path = Path(path)
    stats = stats or LogStats(str(path))
    suffix = path.suffix.lower()
    if suffix == ".log":
        frames: Iterator[can.Message] = _read_candump(path, stats)
    elif suffix == ".blf":
        frames = _read_blf(path, stats)
    elif suffix == ".trc":
        frames = _read_text(path, stats, _TolerantTRCReader)
    elif suffix == ".asc":
        frames = _read_text(path, stats, _TolerantASCReader)
    else:
        frames = iter(can.LogReader(str(path)))
    for frame in frames:
        if frame.is_error_frame:
            stats.error_frames += 1
        elif frame.is_remote_frame:
            stats.remote_frames += 1
        else:
            stats.frames += 1
        yield frame
    if len(stats.malformed) > _MAX_LOGGED:
        _LOGGER.warning("%s: %d malformed lines skipped in all", path, len(stats.malformed))
