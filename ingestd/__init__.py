"""ingestd: a high-throughput beacon ingest server for video-player analytics, into ClickHouse."""

__version__ = "0.1.0"
