"""LLM Monitor: a mitmproxy pass-through that records LLM API usage and cost."""
