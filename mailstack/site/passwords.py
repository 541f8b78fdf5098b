"""Mailbox password hashes in a format Dovecot verifies directly."""

from __future__ import annotations

from argon2 import PasswordHasher

from mailstack.errors import MailstackError

SCHEME = "{ARGON2ID}"
MIN_LENGTH = 8

# p=1: Dovecot verifies through libsodium, which only implements one lane. 64 MiB and three
# passes are libsodium's "interactive/moderate" middle ground and cost ~0.1 s per login.
_HASHER = PasswordHasher(time_cost=3, memory_cost=65536, parallelism=1)


def check_password(password: str, address: str) -> None:
    if len(password) < MIN_LENGTH:
        raise MailstackError(
            f"password for {address} is too short: use at least {MIN_LENGTH} characters"
        )
    if password.strip() != password or "\n" in password:
        raise MailstackError(
            f"password for {address} starts or ends with white space; that is almost "
            "always a copy-paste mistake. Choose another"
        )
    if password.lower() == address.lower() or password.lower() == address.split("@")[0]:
        raise MailstackError(f"password for {address} must not be the address itself")


def hash_password(password: str) -> str:
    return SCHEME + _HASHER.hash(password)


def verify_password(stored: str, password: str) -> bool:
    from argon2.exceptions import VerifyMismatchError

    try:
        return _HASHER.verify(stored.removeprefix(SCHEME), password)
    except VerifyMismatchError:
        return False
