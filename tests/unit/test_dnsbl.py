"""Judging a DNS list's answer for its test entry against postscreen's answer filter."""

from __future__ import annotations

import pytest

from mailstack.cli.storage import checks_lines
from mailstack.verify.dnsbl import answer_matches, judge


@pytest.mark.parametrize("pattern,address,expected", [
    ("127.0.0.[2..11]", "127.0.0.2", True),
    ("127.0.0.[2..11]", "127.0.0.11", True),
    ("127.0.0.[2..11]", "127.0.0.12", False),
    ("127.0.0.[2..11]", "127.255.255.254", False),  # Spamhaus: "you are using a public resolver"
    ("127.0.0.2", "127.0.0.2", True),
    ("127.0.0.2", "127.0.0.3", False),
    ("127.0.[0..255].[0;1;2;3]", "127.0.10.3", True),
    ("127.0.[0..255].[0;1;2;3]", "127.0.10.4", False),
    (None, "127.0.0.9", True),
    ("127.0.0.2", "not an address", False),
])
def test_answer_filter(pattern, address, expected):
    assert answer_matches(pattern, address) is expected


def test_judge_names_the_problem():
    assert judge("zen.example", "127.0.0.[2..11]", {"answers": ["127.0.0.2"]})[0]
    works, said = judge("zen.example", "127.0.0.[2..11]", {"answers": ["127.255.255.254"]})
    assert not works and "127.255.255.254" in said and "refuses this host's queries" in said
    works, said = judge("zen.example", None, {"error": "not listed"})
    assert not works and "not listed" in said


def test_status_lines_show_each_list():
    data = {"blocklists": {"zen.example": {"answers": ["127.0.0.2"]},
                           "bl.example": {"error": "not listed"}}}
    lines = checks_lines(data, {"zen.example": "127.0.0.[2..11]", "bl.example": None})
    assert "blocklist zen.example: lists its test entry" in lines
    assert any(line.startswith("blocklist NOT WORKING: bl.example") for line in lines)
