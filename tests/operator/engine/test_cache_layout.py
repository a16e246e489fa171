"""The model cache layout (scibox_operator.engine.cache_layout): folders, and the download report."""

from __future__ import annotations

import re

import pytest

from scibox_operator.engine import cache_layout


@pytest.mark.parametrize("repo_id, message", [
    ("org/tiny--llama", "'--'"),          # would share a folder with org--tiny/llama
    ("org--tiny/llama", "'--'"),
    ("org/x..y", "'..'"),
    ("org/model.git", ".git"),
    ("a" * 97, "96 characters"),
    ("org/name/extra", "repo id like org/name or name"),
    ("/abs/path", "repo id like org/name or name"),
])
def test_ids_the_hub_refuses_are_refused_here(repo_id, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        cache_layout.model_cache_path("/c", repo_id, None)



def test_model_cache_path_names_one_folder_per_repo_revision():
    assert cache_layout.model_cache_path("/c", "org/name", None) == "/c/org--name/main"
    assert cache_layout.model_cache_path("/c", "org/name", "refs/pr/1") == "/c/org--name/refs--pr--1"
    assert cache_layout.model_cache_path("/c", "gpt2", "main") == "/c/gpt2/main"


@pytest.mark.parametrize("message, report", [
    ('{"bytes": 5, "downloaded_bytes": 5}', {"bytes": 5, "downloaded_bytes": 5}),
    ('  {"error": "not_found", "exit_code": 3}\n', {"error": "not_found", "exit_code": 3}),
    # FallbackToLogsOnError: log lines, then the report on the last line
    ('note: something\n{"error": "failed", "message": "x"}', {"error": "failed", "message": "x"}),
    ('{"bytes": 5}\nTraceback (most recent call last):', None),
    ("[1, 2]", None),
    ("not json", None),
    ("", None),
    (None, None),
], ids=["summary", "padded failure", "report after log lines", "log line last", "not an object", "not json",
        "empty", "none"])
def test_parse_download_report_reads_the_json_object_on_the_last_line(message, report):
    assert cache_layout.parse_download_report(message) == report
