"""Text to speech: piper VITS voices run by onnxruntime, streamed sentence by sentence (/v1/audio/speech)."""
