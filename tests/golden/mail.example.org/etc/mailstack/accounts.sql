-- Managed by mailstack: edit mailstack.yml and run `mailstack deploy`; local changes are overwritten.
--
-- Brings the account tables to the state declared in mailstack.yml, in one
-- transaction: Postfix and Dovecot see either the old state or the new one.
-- Rows no longer declared are deleted (children before parents), then the
-- declared ones are inserted or updated. Idempotent. Deleting a mailbox row
-- leaves its mail on disk.

USE `mailstack`;
START TRANSACTION;

-- 1. Delete what is no longer declared.
DELETE FROM aliases WHERE (source, destination) NOT IN (
  ('postmaster@example.org', 'alice@example.org'),
  ('team@example.net', 'alice@example.org'),
  ('team@example.net', 'bob@example.net'),
  ('team@example.net', 'friend@elsewhere.test')
);

DELETE FROM mailboxes WHERE address NOT IN (
  'alice@example.org',
  'bob@example.net',
  'mailstack-verify@example.org'
);

DELETE FROM domains WHERE name NOT IN (
  'example.net',
  'example.org'
);

-- 2. Insert or update what is declared (parents before children).
INSERT INTO domains (name) VALUES
  ('example.net'),
  ('example.org')
ON DUPLICATE KEY UPDATE name = VALUES(name);

INSERT INTO mailboxes (address, domain, local_part, password_hash, quota_bytes, enabled) VALUES
  ('alice@example.org', 'example.org', 'alice', '{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$FAKE$alice', 0, TRUE),
  ('bob@example.net', 'example.net', 'bob', '{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$FAKE$bob', 2147483648, TRUE),
  ('mailstack-verify@example.org', 'example.org', 'mailstack-verify', '!locked: mailstack verify sets a one-time password for its run', 10485760, TRUE)
ON DUPLICATE KEY UPDATE
  domain = VALUES(domain),
  local_part = VALUES(local_part),
  password_hash = VALUES(password_hash),
  quota_bytes = VALUES(quota_bytes),
  enabled = VALUES(enabled);

INSERT INTO aliases (source, destination) VALUES
  ('postmaster@example.org', 'alice@example.org'),
  ('team@example.net', 'alice@example.org'),
  ('team@example.net', 'bob@example.net'),
  ('team@example.net', 'friend@elsewhere.test')
ON DUPLICATE KEY UPDATE destination = VALUES(destination);

COMMIT;
