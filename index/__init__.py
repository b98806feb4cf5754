"""Live index, snapshots, RAG context, query service and client (built by later issues)."""
