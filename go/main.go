// Command travel-go serves the Travel Recharge API's hot endpoints in Go, on the Python
// service's schema, SQL functions, cache keys and answers (see README.md).
package main

import (
	"context"
	"errors"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v4/pgxpool"
)

const api = "/api/v1"

type server struct {
	db     *pgxpool.Pool
	sql    *statements
	cache  *cache
	tokens *tokenCache
	routes []route
}

// route is one method on one path pattern; "{}" segments are handed to the handler.
type route struct {
	method  string
	pattern []string
	handle  handler
}

func (s *server) routeTable() []route {
	// In the order of the Python route table: /trips/total before /trips/{trip_id}.
	table := []struct {
		method, path string
		handle       handler
	}{
		{"GET", "/health", s.health},
		{"GET", "/trips/total", s.tripsTotal},
		{"GET", "/trips/{}", s.trip},
		{"POST", "/trips", s.board},
		{"GET", "/finance/revenue", s.revenueTotal},
		{"GET", "/cards/{}/balance", s.cardBalance},
		{"POST", "/recharges", s.createRecharge},
		{"GET", "/users/count", s.count(s.sql.usersCount)},
		{"GET", "/users/active/count", s.count(s.sql.usersActiveCount)},
	}
	routes := make([]route, len(table))
	for i, t := range table {
		routes[i] = route{t.method, strings.Split(api+t.path, "/"), t.handle}
	}
	return routes
}

func (rt *route) match(segments []string) ([]string, bool) {
	if len(segments) != len(rt.pattern) {
		return nil, false
	}
	var params []string
	for i, part := range rt.pattern {
		if part == "{}" {
			if segments[i] == "" {
				return nil, false
			}
			params = append(params, segments[i])
		} else if part != segments[i] {
			return nil, false
		}
	}
	return params, true
}

// ServeHTTP routes as Starlette does: the first route whose path and method match; a path
// that matches only with another method is 405 with Allow; none is 404. GET routes answer
// HEAD too (net/http drops the body).
func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	segments := strings.Split(r.URL.Path, "/")
	method := r.Method
	if method == http.MethodHead {
		method = http.MethodGet
	}
	var allowed *route
	for i := range s.routes {
		rt := &s.routes[i]
		params, ok := rt.match(segments)
		if !ok {
			continue
		}
		if rt.method == method {
			s.answer(w, r, rt.handle(w, r, params))
			return
		}
		if allowed == nil {
			allowed = rt
		}
	}
	if allowed != nil {
		allow := allowed.method
		if allow == http.MethodGet {
			allow = "GET, HEAD"
		}
		newProblem(405, "METHOD_NOT_ALLOWED", "Method Not Allowed").with("Allow", allow).write(w)
		return
	}
	newProblem(404, "NOT_FOUND", "Not Found").write(w)
}

// answer writes the problem a handler returned; any other error came from PostgreSQL.
func (s *server) answer(w http.ResponseWriter, r *http.Request, err error) {
	if err == nil {
		return
	}
	var p *problem
	if !errors.As(err, &p) {
		if r.Context().Err() != nil {
			return // the client went away: nobody to answer
		}
		p = fromDatabase(err)
	}
	p.write(w)
}

// logf logs what an operator must see (failures), never a request.
func logf(format string, args ...interface{}) { log.Printf(format, args...) }

func env(name, fallback string) string {
	if value := os.Getenv(name); value != "" {
		return value
	}
	return fallback
}

func main() {
	log.SetFlags(log.LstdFlags | log.LUTC)
	databaseURL, redisURL := os.Getenv("DATABASE_URL"), os.Getenv("REDIS_URL")
	if databaseURL == "" || redisURL == "" {
		log.Fatal("DATABASE_URL and REDIS_URL are required")
	}
	address := net.JoinHostPort(env("HOST", "127.0.0.1"), env("PORT", "8080"))

	queries := queriesDir()
	sql, err := loadStatements(queries)
	if err != nil {
		log.Fatalf("SQL queries: %v", err)
	}
	if err := loadScripts(scriptsDir()); err != nil {
		log.Fatalf("Redis scripts: %v", err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()

	start, cancel := context.WithTimeout(ctx, 10*time.Second)
	db, err := newPool(start, databaseURL)
	if err != nil {
		log.Fatalf("PostgreSQL: %v", err)
	}
	s := &server{db: db, sql: sql, cache: newCache(redisURL), tokens: newTokenCache()}
	s.routes = s.routeTable()
	var epoch int64
	if err := db.QueryRow(start, sql.cacheEpoch).Scan(&epoch); err != nil {
		log.Fatalf("reading the cache epoch (is the schema applied? the Python service applies it): %v", err)
	}
	cancel()
	s.cache.epoch.Store(epoch)
	listening, stopListening := context.WithCancel(context.Background())
	go s.listen(listening, databaseURL)

	httpServer := &http.Server{
		Addr:              address,
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second, // the Python edge's READ_TIMEOUT
		ReadTimeout:       10 * time.Second,
		IdleTimeout:       75 * time.Second,
		MaxHeaderBytes:    16 * 1024, // the Python edge's HEAD_LIMIT
		ErrorLog:          log.Default(),
	}
	failed := make(chan error, 1)
	go func() { failed <- httpServer.ListenAndServe() }()
	log.Printf("serving on http://%s%s/health (queries of %s)", address, api, queries)

	select {
	case err := <-failed:
		log.Fatalf("serve: %v", err)
	case <-ctx.Done():
	}
	// SIGTERM: stop accepting, let requests in flight finish, then close the pools.
	log.Print("shutting down")
	done, cancelShutdown := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancelShutdown()
	if err := httpServer.Shutdown(done); err != nil {
		log.Printf("shutdown: %v", err)
	}
	stopListening()
	db.Close()
	_ = s.cache.pool.Close()
}
