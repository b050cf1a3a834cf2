"""Payments from outside: the provider-neutral inbox, and each provider's rules on it.

`inbox` records, credits once, confirms, retries and reverses any payment; `stars` is Telegram
Stars on it, `wechatpay` WeChat Pay's orders and reconciliation (its protocol is
`bot.providers.wechatpay`). The adapters reach these through the core.
"""
