"""The Pocket TTS engine: loading, voices, continuous batching, streaming codec."""
