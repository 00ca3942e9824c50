"""EVA core package."""
