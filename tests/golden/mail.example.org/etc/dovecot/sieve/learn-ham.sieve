# Managed by mailstack: edit mailstack.yml and run `mailstack deploy`; local changes are overwritten.
# IMAPSieve: a message moved or copied out of Junk is learned as ham, unless it went to
# Trash (deleting spam says nothing about it).
require ["vnd.dovecot.pipe", "copy", "imapsieve", "environment", "variables"];
if environment :matches "imap.mailbox" "*" {
  set "mailbox" "${1}";
}
if string "${mailbox}" "Trash" {
  stop;
}
pipe :copy "rspamd-learn" ["ham"];
