"""Platform front ends (Telegram, WeChat, console): platform I/O only, the core does the rest."""
