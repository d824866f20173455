"""landsurf ingest: deliveries, receipts, MUSCATE readers, COG writing, item building (next issue)."""
