"""Doubles the embedded default and the tests run against: the reference scorer (an
OpenAI-compatible stand-in for a VLM gateway, with fault injection)."""
