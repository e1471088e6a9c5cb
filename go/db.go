package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v4"
	"github.com/jackc/pgx/v4/pgxpool"
)

// Every wait on PostgreSQL is bounded, as db.py bounds it: a statement, a connect.
const (
	statementTimeout = 2 * time.Second
	connectTimeout   = time.Second
	defaultMaxConns  = 16 // the Python service's POOL_MAX default
)

func newPool(ctx context.Context, url string) (*pgxpool.Pool, error) {
	config, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("DATABASE_URL: %w", err)
	}
	// pool_max_conns in the URL wins; otherwise the Python pool's size.
	if !strings.Contains(url, "pool_max_conns") {
		config.MaxConns = defaultMaxConns
	}
	config.MaxConnIdleTime = time.Minute // they may point at a failed-over server
	config.ConnConfig.ConnectTimeout = connectTimeout
	config.ConnConfig.RuntimeParams["jit"] = "off" // it only slows statements this short
	config.ConnConfig.RuntimeParams["application_name"] = "travel-recharge-api-go"
	return pgxpool.ConnectConfig(ctx, config)
}

// listen keeps one connection LISTENing on cache_epoch and write_tokens for the life of the
// server, as the Python service's db.Listener does: a new epoch moves every key name at once,
// a revoked token leaves the token cache at once. On every (re)connection it reads what a
// notification missed meanwhile would have said.
func (s *server) listen(ctx context.Context, url string) {
	for ctx.Err() == nil {
		if err := s.listenOnce(ctx, url); err != nil && ctx.Err() == nil {
			logf("listener: %v", err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func (s *server) listenOnce(ctx context.Context, url string) error {
	config, err := pgx.ParseConfig(url)
	if err != nil {
		return err
	}
	config.ConnectTimeout = 2 * time.Second
	conn, err := pgx.ConnectConfig(ctx, config)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	for _, channel := range []string{"cache_epoch", "write_tokens"} {
		if _, err := conn.Exec(ctx, "LISTEN "+channel); err != nil {
			return err
		}
	}
	var epoch int64
	if err := conn.QueryRow(ctx, s.sql.cacheEpoch).Scan(&epoch); err != nil {
		return err
	}
	s.raiseEpoch(epoch)
	s.tokens.forgetAll()
	for {
		// A silently dead socket is found by the probe after 5 s of silence.
		wait, cancel := context.WithTimeout(ctx, 5*time.Second)
		n, err := conn.WaitForNotification(wait)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if wait.Err() == context.DeadlineExceeded {
				probe, cancel := context.WithTimeout(ctx, 5*time.Second)
				err = conn.Ping(probe)
				cancel()
				if err == nil {
					continue
				}
			}
			return err
		}
		switch n.Channel {
		case "cache_epoch":
			if epoch, err := strconv.ParseInt(n.Payload, 10, 64); err == nil {
				s.raiseEpoch(epoch)
			}
		case "write_tokens":
			if id, err := strconv.ParseInt(n.Payload, 10, 64); err == nil {
				s.tokens.forget(id)
			}
		}
	}
}

// raiseEpoch moves to epoch unless the cache is already past it.
func (s *server) raiseEpoch(epoch int64) {
	for {
		current := s.cache.epoch.Load()
		if epoch <= current || s.cache.epoch.CompareAndSwap(current, epoch) {
			return
		}
	}
}
