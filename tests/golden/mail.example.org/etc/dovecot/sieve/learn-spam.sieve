# Managed by mailstack: edit mailstack.yml and run `mailstack deploy`; local changes are overwritten.
# IMAPSieve: a message moved, copied or appended into Junk is learned as spam.
require ["vnd.dovecot.pipe", "copy", "imapsieve"];
pipe :copy "rspamd-learn" ["spam"];
