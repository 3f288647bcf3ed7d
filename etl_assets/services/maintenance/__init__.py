"""Operations: pulling exports, cleaning up, checking health, recording run failures."""
