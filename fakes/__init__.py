"""Fakes of the outside services, for tests/ and bench/ alike (neither imports the other).

Small real servers on loopback, scripted or misbehaving on request: the Telegram Bot API
(telegram_api, with raw updates in telegram_updates), the WeChat API (wechat_api) and WeChat's
side of a callback (wechat_client), WeChat Pay (wechatpay), OpenAI (openai) and midjourney-proxy
(midjourney); a stand-in core for front-end tests (core); and throwaway PostgreSQL and Redis
servers (services). Not part of the installed product: it is imported from the repository root.
"""
