"""The SMTP wire protocol as pure state machines: parsing, replies, framing, limits.

No asyncio and no sockets here (checked by tests/test_layers.py).
"""
