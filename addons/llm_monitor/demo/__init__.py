"""The demo and generated data: a stand-in provider, demo traffic, synthetic usage history."""
