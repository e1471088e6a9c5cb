package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// The statements are the repository's: every sql/queries/*.sql file holds one, under a
// `-- name: card-balance^` header whose suffix says what it returns (`^` one row, `$` one
// value, `*` many rows), and this server reads them at start as travel/database.py's loader
// does (the text after the header, trimmed, without its final ';'). No SQL is spelt here, so
// none can drift from what the Python service runs. pgx prepares each statement once per
// connection and keeps it in its statement cache.
var queryHeader = regexp.MustCompile(`(?m)^--\s*name:\s*([a-z0-9-]+)([\^$*])\s*$`)

// statements are the queries this server runs, each checked at start for what it returns.
type statements struct {
	ping, cacheEpoch, bumpCacheEpoch      string // ping.sql, cache-epoch.sql, bump-cache-epoch.sql
	usersCount, usersActiveCount          string // users-count.sql, users-active-count.sql
	cardBalance, revenueTotal, tripsTotal string // card-balance.sql, revenue-total.sql, trips-total.sql
	trip, tokenByHash                     string // trip.sql, token-by-hash.sql
	// The single-item write functions of sql/functions.sql: one call, one statement, one
	// transaction (autocommit); a refusal is raised with its SQLSTATE, message and DETAIL.
	rechargeCard, boardTrip string // recharge-card.sql, board-trip.sql
}

type query struct{ sql, returns string }

// loadQueries reads every *.sql file of dir, one named query each, by name.
func loadQueries(dir string) (map[string]query, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.sql"))
	if err != nil {
		return nil, err
	}
	if len(paths) == 0 {
		return nil, fmt.Errorf("%s: no *.sql file (set SQL_DIR to the repository's sql/queries)", dir)
	}
	sort.Strings(paths)
	queries := map[string]query{}
	for _, path := range paths {
		text, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		header := queryHeader.FindSubmatchIndex(text)
		if header == nil {
			return nil, fmt.Errorf("%s: no '-- name: <name><suffix>' header", path)
		}
		name := string(text[header[2]:header[3]])
		if _, twice := queries[name]; twice {
			return nil, fmt.Errorf("%s: query %q is defined twice", path, name)
		}
		sql := strings.TrimRight(strings.TrimSpace(string(text[header[1]:])), ";")
		queries[name] = query{sql: sql, returns: string(text[header[4]:header[5]])}
	}
	return queries, nil
}

// loadStatements picks this server's statements out of dir; a missing one, or one whose
// suffix no longer says what the code scans (one row, one value), fails the start.
func loadStatements(dir string) (*statements, error) {
	queries, err := loadQueries(dir)
	if err != nil {
		return nil, err
	}
	var missing []string
	pick := func(name, returns string) string {
		q, ok := queries[name]
		if !ok {
			missing = append(missing, name+".sql")
		} else if q.returns != returns {
			missing = append(missing, fmt.Sprintf("%s (returns %q, expected %q)", name, q.returns, returns))
		}
		return q.sql
	}
	st := &statements{
		ping:             pick("ping", "$"),
		cacheEpoch:       pick("cache-epoch", "$"),
		bumpCacheEpoch:   pick("bump-cache-epoch", "$"),
		usersCount:       pick("users-count", "$"),
		usersActiveCount: pick("users-active-count", "$"),
		cardBalance:      pick("card-balance", "^"),
		revenueTotal:     pick("revenue-total", "^"),
		tripsTotal:       pick("trips-total", "^"),
		trip:             pick("trip", "^"),
		tokenByHash:      pick("token-by-hash", "^"),
		rechargeCard:     pick("recharge-card", "^"),
		boardTrip:        pick("board-trip", "^"),
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%s: %s", dir, strings.Join(missing, ", "))
	}
	return st, nil
}

// queriesDir is SQL_DIR if set; else the repository's sql/queries (see repositoryDir).
func queriesDir() string { return repositoryDir("SQL_DIR", "sql", "queries") }

// scriptsDir is REDIS_SCRIPTS_DIR if set; else the repository's sql/redis (see repositoryDir).
func scriptsDir() string { return repositoryDir("REDIS_SCRIPTS_DIR", "sql", "redis") }

// repositoryDir is the directory named by the environment variable env if set; else the
// repository's directory of path beside the binary (go/bin/travel-go), else path under the
// working directory (the repository's root).
func repositoryDir(env string, path ...string) string {
	if dir := os.Getenv(env); dir != "" {
		return dir
	}
	if exe, err := os.Executable(); err == nil {
		if exe, err = filepath.EvalSymlinks(exe); err == nil {
			dir := filepath.Join(append([]string{filepath.Dir(exe), "..", ".."}, path...)...)
			if info, err := os.Stat(dir); err == nil && info.IsDir() {
				return filepath.Clean(dir)
			}
		}
	}
	return filepath.Join(path...)
}
