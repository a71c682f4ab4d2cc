"""Local HTTP servers speaking the paid services' protocols: QStash, OpenAI, Upstash, PostgREST."""
