"""A session as the caller holds it: the same object over the socket and over HTTP."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, AsyncIterator, Iterator, List, Optional, Type, Union

from .errors import SandforkError
from .types import FileEntry, Files, Output, Result, SessionInfo

if TYPE_CHECKING:
    from typing import Protocol

    class Backend(Protocol):
        def _cell(
            self, session: str, code: Union[str, bytes], stdin: Union[str, bytes, None], files: Optional[Files], stream: bool
        ) -> Iterator[Union[Output, Result]]: ...
        def _interrupt(self, session: str) -> None: ...
        def _close(self, session: str) -> None: ...
        def _list_files(self, session: str) -> List[FileEntry]: ...
        def _read_file(self, session: str, path: str) -> bytes: ...

    class AsyncBackend(Protocol):
        def _cell(
            self, session: str, code: Union[str, bytes], stdin: Union[str, bytes, None], files: Optional[Files], stream: bool
        ) -> AsyncIterator[Union[Output, Result]]: ...
        async def _interrupt(self, session: str) -> None: ...
        async def _close(self, session: str) -> None: ...
        async def _list_files(self, session: str) -> List[FileEntry]: ...
        async def _read_file(self, session: str, path: str) -> bytes: ...


def _last(events: Iterator[Union[Output, Result]]) -> Result:
    final: Optional[Result] = None
    for event in events:
        if isinstance(event, Result):
            final = event
    assert final is not None, "every cell ends with a result"
    return final


class Session:
    """One sandboxed interpreter that keeps its globals, imports and files between cells.

    Use it as a context manager (``with client.session() as s:``) so that it is closed when the
    block ends; ``close()`` does the same by hand. ``execute()`` blocks until the cell ends;
    ``interrupt()`` (from another thread) raises KeyboardInterrupt in a running cell.
    """

    def __init__(self, backend: "Backend", info: SessionInfo) -> None:
        self._backend = backend
        self.info = info
        self.closed = False

    @property
    def id(self) -> str:
        return self.info.session_id

    def execute(
        self, code: Union[str, bytes], *, stdin: Union[str, bytes, None] = None, files: Optional[Files] = None
    ) -> Result:
        """Runs one cell; ``Result.value`` is the ``repr()`` of its last expression."""
        return _last(self._backend._cell(self.id, code, stdin, files, False))

    def stream(
        self, code: Union[str, bytes], *, stdin: Union[str, bytes, None] = None, files: Optional[Files] = None
    ) -> Iterator[Union[Output, Result]]:
        """Runs one cell, yielding :class:`Output` events as it writes, then its :class:`Result`."""
        return self._backend._cell(self.id, code, stdin, files, True)

    def interrupt(self) -> None:
        """KeyboardInterrupt in the running cell, if any; the session survives."""
        self._backend._interrupt(self.id)

    def files(self) -> List[FileEntry]:
        """The regular files of the session's directory (between cells)."""
        return self._backend._list_files(self.id)

    def read_file(self, path: str) -> bytes:
        """One file of the session's directory (between cells)."""
        return self._backend._read_file(self.id, path)

    def close(self) -> None:
        """Ends the session (its interpreter and files are gone). Closing twice is harmless."""
        if self.closed:
            return
        self.closed = True
        try:
            self._backend._close(self.id)
        except SandforkError as err:
            if err.kind not in ("session_ended", "session_not_found"):
                raise

    def __enter__(self) -> "Session":
        return self

    def __exit__(
        self, kind: Optional[Type[BaseException]], value: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.close()


class AsyncSession:
    """:class:`Session` for asyncio: ``async with await client.session() as s:``."""

    def __init__(self, backend: "AsyncBackend", info: SessionInfo) -> None:
        self._backend = backend
        self.info = info
        self.closed = False

    @property
    def id(self) -> str:
        return self.info.session_id

    async def execute(
        self, code: Union[str, bytes], *, stdin: Union[str, bytes, None] = None, files: Optional[Files] = None
    ) -> Result:
        """Runs one cell; ``Result.value`` is the ``repr()`` of its last expression."""
        final: Optional[Result] = None
        async for event in self._backend._cell(self.id, code, stdin, files, False):
            if isinstance(event, Result):
                final = event
        assert final is not None, "every cell ends with a result"
        return final

    def stream(
        self, code: Union[str, bytes], *, stdin: Union[str, bytes, None] = None, files: Optional[Files] = None
    ) -> AsyncIterator[Union[Output, Result]]:
        """Runs one cell, yielding :class:`Output` events as it writes, then its :class:`Result`."""
        return self._backend._cell(self.id, code, stdin, files, True)

    async def interrupt(self) -> None:
        """KeyboardInterrupt in the running cell, if any; the session survives."""
        await self._backend._interrupt(self.id)

    async def files(self) -> List[FileEntry]:
        return await self._backend._list_files(self.id)

    async def read_file(self, path: str) -> bytes:
        return await self._backend._read_file(self.id, path)

    async def close(self) -> None:
        """Ends the session. Closing twice is harmless."""
        if self.closed:
            return
        self.closed = True
        try:
            await self._backend._close(self.id)
        except SandforkError as err:
            if err.kind not in ("session_ended", "session_not_found"):
                raise

    async def __aenter__(self) -> "AsyncSession":
        return self

    async def __aexit__(
        self, kind: Optional[Type[BaseException]], value: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        await self.close()
