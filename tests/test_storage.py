"""Hadoop file-system helpers: small text files round-trip, whatever their names."""

from __future__ import annotations

import pytest

from skinspark import storage


@pytest.mark.parametrize("name", ["notes.json", "_manifest.json", ".hidden.json"])
def test_read_text_returns_what_write_text_wrote(spark, tmp_path, name):
    path = str(tmp_path / name)
    storage.write_text(spark, path, '{"status": "complete"}\nsecond line ✓')
    assert storage.read_text(spark, path) == '{"status": "complete"}\nsecond line ✓'


def test_read_text_of_a_missing_file_names_it(spark, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        storage.read_text(spark, str(tmp_path / "missing.json"))
