"""The values the clients return (the same for every transport)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

#: Input files: a mapping of relative path to content (``str`` is written as UTF-8), or a
#: sequence of :class:`File`.
Files = Union[Mapping[str, Union[str, bytes]], Sequence["File"]]


@dataclass(frozen=True)
class Limits:
    """Limits asked for one run or session. Each may only lower the server's; None = its
    default."""

    timeout_ms: Optional[int] = None
    memory_mb: Optional[int] = None
    output_bytes: Optional[int] = None

    def as_dict(self) -> Dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class File:
    """A file of the run's working directory: its relative path and bytes."""

    path: str
    content: bytes

    @property
    def text(self) -> str:
        """The content decoded as UTF-8 (invalid bytes become U+FFFD)."""
        return self.content.decode("utf-8", "replace")


@dataclass(frozen=True)
class Usage:
    wall_ms: float
    cpu_ms: float
    max_rss_kb: int


@dataclass(frozen=True)
class Timings:
    queue_ms: float
    spawn_ms: float
    run_ms: float
    total_ms: float


@dataclass(frozen=True)
class Result:
    """How a run (or a session's cell) ended.

    ``status`` is one of ``ok``, ``error``, ``timeout``, ``cpu_limit``, ``memory_limit``,
    ``output_limit``, ``killed``, ``internal_error`` (refusals raise
    :class:`~sandfork.Rejected` instead). ``stdout``/``stderr`` are decoded as UTF-8 (invalid
    bytes become U+FFFD); when the output was streamed they hold only what was not.
    """

    status: str
    exit_code: Optional[int]
    signal: Optional[int]
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    usage: Usage
    timings: Timings
    message: Optional[str]
    request_id: str
    warm: bool
    #: Function mode: ``main()``'s return value as JSON text; None otherwise (see ``value``).
    result_json: Optional[str] = None
    files: List[File] = field(default_factory=list)
    files_truncated: bool = False
    #: A session cell's value: the ``repr()`` of its last expression, when there is one.
    value: Optional[str] = None
    #: A session cell ended its session (a crash, ``sys.exit()``, a cell that would not stop).
    session_ended: bool = False
    stdout_streamed: int = 0
    stderr_streamed: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def result(self) -> Any:
        """Function mode: ``main()``'s return value, decoded from JSON (None when there is
        none: check ``result_json`` to tell ``None`` returned from no value)."""
        return None if self.result_json is None else json.loads(self.result_json)

    def file(self, path: str) -> Optional[File]:
        """The returned file at ``path``, if there is one."""
        return next((f for f in self.files if f.path == path), None)


@dataclass(frozen=True)
class Output:
    """A piece of a streamed run's output, as the program wrote it. ``text`` holds whole
    characters (a character written in two pieces arrives whole)."""

    stream: str
    text: str


@dataclass(frozen=True)
class SessionInfo:
    session_id: str
    profile: str
    idle_timeout_s: int
    cells: int = 0
    busy: bool = False


@dataclass(frozen=True)
class FileEntry:
    """A file of a session's directory, as listed: path and size in bytes."""

    path: str
    size: int


def file_items(files: Optional[Files]) -> List[Tuple[str, bytes]]:
    """Input files as (path, bytes) pairs."""
    if files is None:
        return []
    if isinstance(files, Mapping):
        return [
            (path, content.encode("utf-8") if isinstance(content, str) else bytes(content))
            for path, content in files.items()
        ]
    return [(f.path, f.content) for f in files]


def limit_fields(limits: Union[Limits, Mapping[str, int], None]) -> Dict[str, int]:
    if limits is None:
        return {}
    if isinstance(limits, Limits):
        return limits.as_dict()
    unknown = set(limits) - {"timeout_ms", "memory_mb", "output_bytes"}
    if unknown:
        raise ValueError(f"unknown limits: {sorted(unknown)}")
    return dict(limits)
