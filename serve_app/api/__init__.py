"""The HTTP API (v1): a FastAPI app that Ray Serve's Gateway deployment serves."""
