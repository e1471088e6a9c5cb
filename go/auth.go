package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v4"
)

// Tokens are stored as sha256 digests only; a known one is kept 30 s so that a write costs
// one database round trip, as auth.TokenCache does. A revocation NOTIFYs write_tokens with
// the token's id, and the listener drops it at once.
const (
	tokenCacheTTL     = 30 * time.Second
	tokenCacheEntries = 10000 // unknown tokens are cached too: bound the memory
)

type caller struct {
	tokenID         int64
	role            string
	rechargePointID *int64
}

type tokenEntry struct {
	expires time.Time
	caller  *caller // nil: unknown or revoked
}

type tokenCache struct {
	mu         sync.Mutex
	entries    map[[sha256.Size]byte]tokenEntry
	generation uint64 // bumped by every revocation: a lookup begun before one is not kept
}

func newTokenCache() *tokenCache {
	return &tokenCache{entries: map[[sha256.Size]byte]tokenEntry{}}
}

func (t *tokenCache) lookup(ctx context.Context, s *server, token string) (*caller, error) {
	key := sha256.Sum256([]byte(token))
	now := time.Now()
	t.mu.Lock()
	cached, ok := t.entries[key]
	generation := t.generation
	t.mu.Unlock()
	if ok && cached.expires.After(now) {
		return cached.caller, nil
	}
	ctx, cancel := context.WithTimeout(ctx, statementTimeout)
	defer cancel()
	var found caller
	err := s.db.QueryRow(ctx, s.sql.tokenByHash, key[:]).Scan(&found.tokenID, &found.role, &found.rechargePointID)
	var result *caller
	switch {
	case err == nil:
		result = &found
	case errors.Is(err, pgx.ErrNoRows):
	default:
		return nil, err
	}
	t.mu.Lock()
	if generation == t.generation {
		if len(t.entries) > tokenCacheEntries {
			t.entries = map[[sha256.Size]byte]tokenEntry{}
		}
		t.entries[key] = tokenEntry{now.Add(tokenCacheTTL), result}
	}
	t.mu.Unlock()
	return result, nil
}

func (t *tokenCache) forget(tokenID int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.generation++
	for key, entry := range t.entries {
		if entry.caller != nil && entry.caller.tokenID == tokenID {
			delete(t.entries, key)
		}
	}
}

func (t *tokenCache) forgetAll() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.generation++
	t.entries = map[[sha256.Size]byte]tokenEntry{}
}

func unauthorized(detail, challenge string) *problem {
	return newProblem(401, "UNAUTHORIZED", detail).with("WWW-Authenticate", challenge)
}

// authorize is auth.authorize: the caller behind `Authorization: Bearer`, if its role is
// one of roles (admin always).
func (s *server) authorize(r *http.Request, roles ...string) (*caller, error) {
	given := r.Header.Values("Authorization")
	if len(given) > 1 { // which one counts would depend on who reads them: neither does
		return nil, unauthorized("send one Authorization header", "Bearer")
	}
	header := ""
	if len(given) == 1 {
		header = latin1(given[0])
	}
	scheme, token := header, ""
	if i := strings.IndexByte(header, ' '); i >= 0 {
		scheme, token = header[:i], header[i+1:]
	}
	token = strings.TrimFunc(token, pyWhitespace)
	if !strings.EqualFold(scheme, "bearer") || len(scheme) != 6 || token == "" {
		return nil, unauthorized("send Authorization: Bearer <token>", "Bearer")
	}
	c, err := s.tokens.lookup(r.Context(), s, token)
	if err != nil {
		return nil, fromDatabase(err)
	}
	if c == nil {
		return nil, unauthorized("unknown or revoked token", `Bearer error="invalid_token"`)
	}
	if c.role != "admin" && !contains(roles, c.role) {
		return nil, newProblem(403, "FORBIDDEN", "a "+c.role+" token cannot do this")
	}
	return c, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// latin1 reads header bytes as Starlette does (ISO-8859-1), so that a token's digest is
// that of the same text (sha256 of its UTF-8) on both services.
func latin1(s string) string {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			b := make([]rune, 0, len(s))
			for j := 0; j < len(s); j++ {
				b = append(b, rune(s[j]))
			}
			return string(b)
		}
	}
	return s
}

// pyWhitespace is what Python's str.strip() strips, within Latin-1.
func pyWhitespace(r rune) bool {
	switch r {
	case ' ', '\t', '\n', '\r', '\v', '\f', 0x1c, 0x1d, 0x1e, 0x1f, 0x85, 0xa0:
		return true
	}
	return false
}
