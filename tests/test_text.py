"""Messages quote a user's long value cut short (softmax_cls.text.shorten), and every md5
of a data file comes from softmax_cls.fsutil."""

from __future__ import annotations

import hashlib

import pytest
from fake_cifar import tar_gz

from softmax_cls.config import config_from_dict
from softmax_cls.data.download import download_file
from softmax_cls.data.untrusted import safe_extract
from softmax_cls.errors import ConfigError, DataError, DownloadError
from softmax_cls.fsutil import file_md5, md5_hash
from softmax_cls.text import shorten


def test_shorten_keeps_short_text_and_cuts_long_text_with_its_length():
    assert shorten("abc", 3) == "abc"
    assert shorten("abcd", 3) == "abc... (4 characters)"
    assert shorten("", 0) == ""


def test_shorten_quotes_only_for_the_control_characters_it_shows():
    assert shorten("a\nb", 5) == "'a\\nb'"
    assert shorten("ab\ncd", 2) == "ab... (5 characters)"  # the newline is cut off


def test_a_long_unknown_config_key_is_cut_in_the_message():
    key = "k" * 10_000
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"optim": {key: 1}})
    message = str(caught.value)
    assert "(10006 characters)" in message  # "optim." + the key
    assert len(message) < 400


def test_a_long_url_is_cut_in_the_message(tmp_path):
    url = "ftp://example.invalid/" + "u" * 10_000
    with pytest.raises(DownloadError) as caught:
        download_file(url, tmp_path / "x", progress=False)
    assert f"({len(url)} characters)" in str(caught.value)
    assert len(str(caught.value)) < 400


def test_a_long_member_name_is_cut_in_the_message(tmp_path):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(tar_gz([("m" * 5000, b"x" * 100)]))
    with pytest.raises(DataError) as caught:
        safe_extract(archive, tmp_path / "out", sizes={}, member_cap=10, total_cap=1 << 20)
    assert "(5000 characters)" in str(caught.value)
    assert len(str(caught.value)) < 400


@pytest.mark.parametrize("size", [0, 5, (1 << 20) + 3])
def test_file_md5_is_the_md5_of_the_bytes(tmp_path, size):
    path = tmp_path / "f"
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    path.write_bytes(data)
    assert file_md5(path) == hashlib.md5(data).hexdigest() == md5_hash(data).hexdigest()


def test_counted_says_one_in_the_singular_and_others_in_the_plural():
    from softmax_cls.text import counted

    assert [counted(n, "epoch") for n in (0, 1, 2)] == ["0 epochs", "1 epoch", "2 epochs"]
    assert counted(1, "class", "classes") == "1 class"
    assert counted(3, "class", "classes") == "3 classes"
