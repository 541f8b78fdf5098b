-- Managed by mailstack: edit mailstack.yml and run `mailstack deploy`; local changes are overwritten.
--
-- Database accounts with least privilege. Run as root over the unix socket,
-- after schema.sql (the grants name its tables). Idempotent: creates missing
-- accounts, resets their passwords and grants to exactly what is below.
-- Kept on the host after it ran, root-only (0600 in a 0700 directory): it is the
-- record of what was applied, which the next deploy compares. Its passwords are the
-- ones Postfix's lookup tables and Dovecot's SQL settings hold anyway.

-- What mysql_secure_installation does: no anonymous accounts, no root login
-- from other hosts, no test database.
DELETE FROM mysql.global_priv WHERE User = '';
DELETE FROM mysql.global_priv WHERE User = 'root' AND Host NOT IN ('localhost', '127.0.0.1', '::1');
DELETE FROM mysql.db WHERE Db = 'test' OR Db = 'test\\_%';
DROP DATABASE IF EXISTS test;
FLUSH PRIVILEGES;

-- Each account exists for TCP clients ('127.0.0.1', what the daemons use) and
-- for unix-socket clients ('localhost').

-- Postfix: reads domains, aliases, whether a mailbox exists and has a quota, never a
-- password hash.
CREATE USER IF NOT EXISTS 'mailstack_postfix'@'127.0.0.1' IDENTIFIED BY 'FAKE-postfix-pw';
ALTER USER 'mailstack_postfix'@'127.0.0.1' IDENTIFIED BY 'FAKE-postfix-pw';
REVOKE ALL PRIVILEGES, GRANT OPTION FROM 'mailstack_postfix'@'127.0.0.1';
GRANT SELECT ON `mailstack`.domains TO 'mailstack_postfix'@'127.0.0.1';
GRANT SELECT ON `mailstack`.aliases TO 'mailstack_postfix'@'127.0.0.1';
GRANT SELECT (address, domain, local_part, enabled, quota_bytes) ON `mailstack`.mailboxes TO 'mailstack_postfix'@'127.0.0.1';

-- Dovecot: reads mailboxes (password hash, quota).
CREATE USER IF NOT EXISTS 'mailstack_dovecot'@'127.0.0.1' IDENTIFIED BY 'FAKE-dovecot-pw';
ALTER USER 'mailstack_dovecot'@'127.0.0.1' IDENTIFIED BY 'FAKE-dovecot-pw';
REVOKE ALL PRIVILEGES, GRANT OPTION FROM 'mailstack_dovecot'@'127.0.0.1';
GRANT SELECT ON `mailstack`.mailboxes TO 'mailstack_dovecot'@'127.0.0.1';

-- SOGo (options.groupware): the accounts' view (login, hash) only; its own database is in
-- mailstack-groupware-db, inside the encrypted store.
CREATE USER IF NOT EXISTS 'mailstack_sogo'@'127.0.0.1' IDENTIFIED BY 'FAKE-sogo-pw/+';
ALTER USER 'mailstack_sogo'@'127.0.0.1' IDENTIFIED BY 'FAKE-sogo-pw/+';
REVOKE ALL PRIVILEGES, GRANT OPTION FROM 'mailstack_sogo'@'127.0.0.1';
GRANT SELECT ON `mailstack`.`sogo_users` TO 'mailstack_sogo'@'127.0.0.1';

-- Postfix: reads domains, aliases, whether a mailbox exists and has a quota, never a
-- password hash.
CREATE USER IF NOT EXISTS 'mailstack_postfix'@'localhost' IDENTIFIED BY 'FAKE-postfix-pw';
ALTER USER 'mailstack_postfix'@'localhost' IDENTIFIED BY 'FAKE-postfix-pw';
REVOKE ALL PRIVILEGES, GRANT OPTION FROM 'mailstack_postfix'@'localhost';
GRANT SELECT ON `mailstack`.domains TO 'mailstack_postfix'@'localhost';
GRANT SELECT ON `mailstack`.aliases TO 'mailstack_postfix'@'localhost';
GRANT SELECT (address, domain, local_part, enabled, quota_bytes) ON `mailstack`.mailboxes TO 'mailstack_postfix'@'localhost';

-- Dovecot: reads mailboxes (password hash, quota).
CREATE USER IF NOT EXISTS 'mailstack_dovecot'@'localhost' IDENTIFIED BY 'FAKE-dovecot-pw';
ALTER USER 'mailstack_dovecot'@'localhost' IDENTIFIED BY 'FAKE-dovecot-pw';
REVOKE ALL PRIVILEGES, GRANT OPTION FROM 'mailstack_dovecot'@'localhost';
GRANT SELECT ON `mailstack`.mailboxes TO 'mailstack_dovecot'@'localhost';

-- SOGo (options.groupware): the accounts' view (login, hash) only; its own database is in
-- mailstack-groupware-db, inside the encrypted store.
CREATE USER IF NOT EXISTS 'mailstack_sogo'@'localhost' IDENTIFIED BY 'FAKE-sogo-pw/+';
ALTER USER 'mailstack_sogo'@'localhost' IDENTIFIED BY 'FAKE-sogo-pw/+';
REVOKE ALL PRIVILEGES, GRANT OPTION FROM 'mailstack_sogo'@'localhost';
GRANT SELECT ON `mailstack`.`sogo_users` TO 'mailstack_sogo'@'localhost';
