-- Managed by mailstack: edit mailstack.yml and run `mailstack deploy`; local changes are overwritten.
--
-- The mail database: what Postfix and Dovecot look up. Idempotent: creates
-- what is missing and never drops anything. Rows are written by accounts.sql.

CREATE DATABASE IF NOT EXISTS `mailstack`
  CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
USE `mailstack`;

-- Domains we receive mail for (Postfix virtual_mailbox_domains).
CREATE TABLE IF NOT EXISTS domains (
  name          VARCHAR(253)    NOT NULL,
  PRIMARY KEY (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- One row per mailbox: Postfix checks that the recipient exists, Dovecot
-- authenticates the user and finds the mail. address = local_part@domain.
-- Deleting a domain that still has mailboxes is refused (ON DELETE RESTRICT):
-- accounts.sql removes mailboxes first, so that only stops mistakes by hand.
CREATE TABLE IF NOT EXISTS mailboxes (
  address       VARCHAR(320)    NOT NULL,
  domain        VARCHAR(253)    NOT NULL,
  local_part    VARCHAR(64)     NOT NULL,
  password_hash VARCHAR(255)    NOT NULL,
  quota_bytes   BIGINT UNSIGNED NOT NULL DEFAULT 0,
  enabled       BOOLEAN         NOT NULL DEFAULT TRUE,
  PRIMARY KEY (address),
  UNIQUE KEY mailboxes_domain_local_part (domain, local_part),
  CONSTRAINT mailboxes_domain_fk FOREIGN KEY (domain) REFERENCES domains (name)
    ON DELETE RESTRICT ON UPDATE RESTRICT
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Aliases (Postfix virtual_alias_maps): mail for source goes to destination.
-- Several rows with the same source deliver to several destinations; the
-- destinations' owners may also send as source (smtpd_sender_login_maps).
CREATE TABLE IF NOT EXISTS aliases (
  source        VARCHAR(320)    NOT NULL,
  destination   VARCHAR(320)    NOT NULL,
  PRIMARY KEY (source, destination)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Groupware (options.groupware): what SOGo may see of the accounts, under the column
-- names it expects: the enabled mailboxes and their {ARGON2ID} hashes, nothing else.
CREATE OR REPLACE SQL SECURITY DEFINER VIEW `sogo_users` AS
  SELECT address AS c_uid, address AS c_name, password_hash AS c_password,
         address AS c_cn, address AS mail
  FROM mailboxes WHERE enabled = 1;
-- (SOGo's own database is not here: it lives in the encrypted store, in a server of its own,
-- mailstack-groupware-db.)
