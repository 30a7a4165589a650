"""Evidence: where a cited passage sits in its document (a PDF page with the passage highlighted, or the text
around it), for the UI, the API and ``rag preview``."""
