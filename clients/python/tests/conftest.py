"""Where the live service is: set by the Rust harness (tests/python_client.rs), which starts a
private daemon and shim, or by hand against `scripts/serve`'s:

    SANDFORK_SOCKET=/run/sandfork/sandfork.sock SANDFORK_URL=http://127.0.0.1:8080 \\
    SANDFORK_API_KEY=$(cat target/serve/example.key) pytest clients/python/tests
"""

from __future__ import annotations

import os
from typing import Callable, Iterator, Union

import pytest

import sandfork

AnyClient = Union[sandfork.Client, sandfork.HTTPClient]


def need(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not set (on CI nothing may skip)")
        pytest.skip(f"{name} is not set: no live service to test against")
    return value


@pytest.fixture
def socket_client() -> sandfork.Client:
    return sandfork.Client(need("SANDFORK_SOCKET"), timeout=60)


@pytest.fixture
def http_client() -> sandfork.HTTPClient:
    return sandfork.HTTPClient(need("SANDFORK_URL"), need("SANDFORK_API_KEY"), timeout=60)


@pytest.fixture(params=["socket", "http"])
def client(request: pytest.FixtureRequest) -> AnyClient:
    """Each test that takes `client` runs over both transports."""
    if request.param == "socket":
        return sandfork.Client(need("SANDFORK_SOCKET"), timeout=60)
    return sandfork.HTTPClient(need("SANDFORK_URL"), need("SANDFORK_API_KEY"), timeout=60)


@pytest.fixture(params=["socket", "http"])
def async_client(request: pytest.FixtureRequest) -> Union[sandfork.AsyncClient, sandfork.AsyncHTTPClient]:
    if request.param == "socket":
        return sandfork.AsyncClient(need("SANDFORK_SOCKET"), timeout=60)
    return sandfork.AsyncHTTPClient(need("SANDFORK_URL"), need("SANDFORK_API_KEY"), timeout=60)


@pytest.fixture
def wait_idle(socket_client: sandfork.Client) -> Callable[[float], bool]:
    """Waits until no slot of the daemon is busy; False if one still is after `seconds`."""
    import time

    def wait(seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if socket_client.status()["slots_busy"] == 0:
                return True
            time.sleep(0.05)
        return False

    return wait


@pytest.fixture
def other_tenant() -> Iterator[sandfork.HTTPClient]:
    yield sandfork.HTTPClient(need("SANDFORK_URL"), need("SANDFORK_OTHER_API_KEY"), timeout=60)
