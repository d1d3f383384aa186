"""The upstream engine: each sentence forwarded to a TTS server the operator already runs, one
module per upstream protocol (`openai`, `vllm_omni`) behind one engine (`engine`)."""
