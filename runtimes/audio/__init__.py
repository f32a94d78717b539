"""The audio runtime: Whisper speech recognition and translation behind the bus."""
