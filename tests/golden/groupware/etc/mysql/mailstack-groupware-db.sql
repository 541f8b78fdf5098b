-- Managed by mailstack: edit mailstack.yml and run `mailstack deploy`; local changes are overwritten.
-- Run by mailstack-groupware-db at every start (its init-file): SOGo's database and account,
-- with the password of the vault (secrets/site.yml mariadb.sogo_password). SOGo makes its
-- tables itself. Each statement on one line: the server reads this file line by line.
CREATE DATABASE IF NOT EXISTS `sogo` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE USER IF NOT EXISTS 'mailstack_sogo'@'localhost' IDENTIFIED BY 'FAKE-sogo-pw/+';
ALTER USER 'mailstack_sogo'@'localhost' IDENTIFIED BY 'FAKE-sogo-pw/+';
GRANT ALL PRIVILEGES ON `sogo`.* TO 'mailstack_sogo'@'localhost';
