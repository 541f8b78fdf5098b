-- Managed by mailstack: edit mailstack.yml and run `mailstack deploy`; local changes are overwritten.
-- Our users' own mail: the From: header must be the envelope sender, which Postfix has
-- already matched against the addresses the login owns (smtpd_sender_login_maps). Without
-- this, a user could send mail DKIM-signed by this server under a colleague's name.
rspamd_config:register_symbol({
  name = 'MAILSTACK_FROM_NOT_OWNED',
  type = 'prefilter',
  group = 'mailstack',
  callback = function(task)
    if not task:get_user() then
      return false
    end
    local envelope = task:get_from('smtp')
    local header = task:get_from('mime')
    local sender = (envelope and envelope[1] and envelope[1].addr or ''):lower()
    if sender ~= '' and header and #header == 1 and header[1].addr:lower() == sender then
      return false
    end
    task:set_pre_result('reject', 'the From: header must be your own address, the one you send from', 'mailstack')
    return true
  end,
})
