"""The API transport's proxy: what the environment says, read once, as httpx2 read it."""

from __future__ import annotations

import pytest

from webhook.helicone import _proxy_for


def test_a_proxy_in_the_environment_is_used_unless_no_proxy_names_the_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name.lower(), raising=False)
        monkeypatch.delenv(name, raising=False)
    assert _proxy_for("https://api.helicone.ai") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert _proxy_for("https://api.helicone.ai") == "http://proxy.internal:3128"
    assert _proxy_for("http://api.helicone.ai") is None  # only HTTPS_PROXY is set
    monkeypatch.setenv("NO_PROXY", "helicone.ai")
    assert _proxy_for("https://api.helicone.ai") is None
    monkeypatch.delenv("NO_PROXY")
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.setenv("ALL_PROXY", "http://all.internal:3128")
    assert _proxy_for("https://api.helicone.ai") == "http://all.internal:3128"
    monkeypatch.setenv("ALL_PROXY", "socks5://all.internal:1080")  # not an HTTP proxy
    assert _proxy_for("https://api.helicone.ai") is None
