#!/bin/sh
# Managed by mailstack: edit mailstack.yml and run `mailstack deploy`; local changes are overwritten.
#
# quota-warning PERCENT ADDRESS: Dovecot's quota-warning service runs it when a mailbox
# crosses a warning level (quota_warning in dovecot.conf). It mails the user a notice from
# their domain's postmaster through Postfix (sendmail), which DKIM-signs it like any local
# mail. The envelope sender is empty, as for any automatic notice (RFC 3834): nothing ever
# bounces back to it; Auto-Submitted keeps vacation replies from answering it.
set -eu
percent=$1
address=$2
case $percent in
  '' | *[!0-9]*) echo "quota-warning: not a percentage: $percent" >&2; exit 64 ;;
esac
case $address in
  *@*) ;;
  *) echo "quota-warning: not an address: $address" >&2; exit 64 ;;
esac
from=postmaster@${address#*@}
/usr/sbin/sendmail -i -f '' -- "$address" <<MAIL
From: Postmaster <$from>
To: <$address>
Subject: Your mailbox is $percent % full
Date: $(date -R)
Message-ID: <$(date +%s).$$.quota-warning@mail.example.org>
Auto-Submitted: auto-generated
MIME-Version: 1.0
Content-Type: text/plain; charset=us-ascii

Your mailbox $address has used $percent % of its quota.

When it is full, new mail for it is refused. Delete the messages you no longer
need, and empty the Trash and Junk folders, to make room.
MAIL
