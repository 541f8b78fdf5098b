# Managed by mailstack: edit mailstack.yml and run `mailstack deploy`; local changes are overwritten.
# Runs before each user's own Sieve script: mail rspamd scored at or above junk_score
# (its milter added "X-Spam: Yes") goes into Junk.
require ["fileinto"];
if header :is "X-Spam" "Yes" {
  fileinto "Junk";
  stop;
}
