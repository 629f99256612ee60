"""The conversation engine: history windows and turns."""
