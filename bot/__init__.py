"""The conversation core: commands, conversations and providers (OpenAI, Midjourney).

Platform-neutral: it imports neither aiogram nor wechatpy. Adapters hand it a `Message` and
render the events it yields; money moves only through `billing`.
"""
