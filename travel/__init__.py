"""The Travel Recharge API's service code, by concern (the route table is in server.py, every
Redis key in cachekeys.py, every statement in sql/):

- `edge/`: the HTTP protocol's bounds (head size, read time, connections) and the one-write answer;
- `endpoints/`: the endpoint declaration and its wrapper, the handlers (reads, writes, tokens),
  the router, the OpenAPI document and the dashboard;
- `cache.py`: the cache-aside protocol over Redis; `database.py`: the pool and named queries;
- `groupcommit.py`: writes that arrive together share one call, one commit, one invalidation;
- `auth.py`: bearer tokens; `errors.py`: problem+json and SQLSTATEs; `models.py`: bodies and answers;
- `observability/`: Prometheus counters, the request log, /stats and the middleware that feeds them;
- `startup/`: settings read at start, the embedded PostgreSQL and Valkey, signals, serving.
"""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent  # where sql/ and static/ are
