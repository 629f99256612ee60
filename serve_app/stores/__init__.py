"""Persistence: MongoDB (truth), Redis (counters, locks, caches), Milvus (vectors)."""
