"""What the tests share: the session's servers and the API under test (stack), data made
through the API (api), the database behind it (db), hostile-input helpers (hostile), a proxy
that cuts links (faultproxy), server processes (processes) and polling (polling)."""
