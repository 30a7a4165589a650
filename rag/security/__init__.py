"""Who may read what: access policies, users and API keys, identities, and the audit log."""
