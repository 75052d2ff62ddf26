"""Retrieval service and reports: a standard-library HTTP server over an index, and HTML result pages."""
