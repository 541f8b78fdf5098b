"""verify's check that submitted mail hides the user's computer (mailstack/verify/roundtrip)."""

from __future__ import annotations

from mailstack.verify.clients import HELO_NAME
from mailstack.verify.roundtrip import hides_client

BODY = b"\r\n\r\nRound trip check; the body may name " + HELO_NAME.encode() + b" freely.\r\n"


def test_a_message_without_the_clients_received_header_passes():
    raw = (b"Return-Path: <v@example.org>\r\nReceived: from mail.example.org by mail.example.org"
           b" with LMTP\r\nSubject: x\r\n" + BODY)
    assert hides_client(raw)[0]


def test_a_received_header_naming_the_client_fails():
    raw = (b"Received: from " + HELO_NAME.encode() + b" (unknown [192.0.2.7])\r\n by "
           b"mail.example.org (Postfix) with ESMTPSA\r\nSubject: x\r\n" + BODY)
    passed, detail = hides_client(raw)
    assert not passed and HELO_NAME in detail
