"""store.connect / URL handling and the embedded Redis (issue #5, #7)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import redis

from recsys_batch.config import RedisConfig
from recsys_batch.errors import ConfigError, PublishError
from recsys_batch.publish import embedded, store


class TestUrls:
    @pytest.mark.parametrize(
        ("url", "masked"),
        [
            ("redis://:s3cret@host:6379/0", "redis://:***@host:6379/0"),
            ("rediss://app:s3cret@host/1", "rediss://app:***@host/1"),
            ("redis://host:6379/0", "redis://host:6379/0"),
            (None, "embedded"),
            ("redis://u:pa#ss/w?d@h:1/0", "redis://u:***@h:1/0"),  # unencoded, issue #7
            ("redis://u:p@ss@h:1/0", "redis://u:***@h:1/0"),  # the last '@' ends it
            ("redis://bare-secret@h:1/0", "redis://***:***@h:1/0"),  # no ':' may be a password
        ],
    )
    def test_mask_url(self, url: str | None, masked: str) -> None:
        assert store.mask_url(url) == masked

    def test_mask_text_hides_password(self) -> None:
        text = store.mask_text("AUTH failed for s3cret", "redis://u:s3cret@h/0")
        assert "s3cret" not in text

    def test_mask_text_hides_every_piece_of_an_unencoded_password(self) -> None:
        url = "redis://u:12#p%40ss@h:1/0"
        text = store.mask_text(f"at {url}: connecting to u:12 as 12#p@ss (12#p%40ss)", url)
        assert text == "at redis://u:***@h:1/0: connecting to u:*** as *** (***)"

    def test_malformed_url_error_quotes_no_part_of_the_password(self) -> None:
        cfg = RedisConfig(url="redis://u:pa?ss-S3cret@127.0.0.1:6379/0")
        with pytest.raises(ConfigError, match="percent-encode") as info:
            store.connect(cfg)
        assert "pa" not in str(info.value).replace("password", "")

    @pytest.mark.parametrize(
        ("url", "resolved", "cluster"),
        [
            ("redis://h:1/0", "redis://h:1/0", False),
            ("rediss://h:1/0", "rediss://h:1/0", False),
            ("redis+cluster://h:7000", "redis://h:7000", True),
            ("rediss+cluster://u:p@h:7000", "rediss://u:p@h:7000", True),
        ],
    )
    def test_resolve_url(self, url: str, resolved: str, cluster: bool) -> None:
        assert store.resolve_url(RedisConfig(url=url)) == (resolved, cluster)

    def test_cluster_flag(self) -> None:
        assert store.resolve_url(RedisConfig(url="redis://h:1", cluster=True))[1] is True

    def test_unknown_scheme_is_config_error(self) -> None:
        with pytest.raises(ConfigError, match="unsupported Redis URL"):
            store.resolve_url(RedisConfig(url="http://u:pw@h"))

    def test_unreachable_is_publish_error_with_masked_password(self) -> None:
        cfg = RedisConfig(url="redis://:topsecret@127.0.0.1:1/0", connect_timeout_seconds=0.5)
        with pytest.raises(PublishError) as info:
            store.connect(cfg)
        assert "topsecret" not in str(info.value)
        assert "***" in str(info.value)


class TestEmbedded:
    def test_starts_persists_and_outlives_its_starter(self, tmp_path: Path) -> None:
        directory = tmp_path / "emb"
        # Start it from a child process that exits: the server must keep running.
        code = (
            "from pathlib import Path; from recsys_batch.config import RedisConfig;"
            "from recsys_batch.publish.embedded import embedded_url;"
            f"print(embedded_url(RedisConfig(embedded_dir=Path({str(directory)!r}))))"
        )
        url = subprocess.run(
            [sys.executable, "-c", code], check=True, capture_output=True, text=True
        ).stdout.strip()
        try:
            assert url.startswith("unix://")
            client = redis.Redis.from_url(url)
            client.set("k", "v")
            assert client.config_get("appendonly") == {"appendonly": "yes"}
            assert client.config_get("port") == {"port": "0"}
            # Reused, not restarted, by the next caller.
            assert embedded.embedded_url(RedisConfig(embedded_dir=directory)) == url
            client.close()
            assert embedded.stop_embedded(directory)
            # Restarted later: the data persisted.
            client = store.connect(RedisConfig(embedded_dir=directory))
            assert client.get("k") == b"v"
            client.close()
        finally:
            embedded.stop_embedded(directory)
        assert not embedded.ping(embedded.embedded_socket_path(directory))

    def test_long_directory_gets_short_socket(self, tmp_path: Path) -> None:
        sock = embedded.embedded_socket_path(tmp_path / ("x" * 150))
        assert len(str(sock)) <= 100

    def test_unwritable_directory_is_publish_error(self, tmp_path: Path) -> None:
        blocker = tmp_path / "file"
        blocker.write_text("")
        with pytest.raises(PublishError, match="embedded Redis"):
            store.connect(RedisConfig(embedded_dir=blocker / "sub"))
