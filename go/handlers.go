package main

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v4"
)

const (
	maxBody            = 64 * 1024 // server.MAX_BODY
	idempotencyKeyMax  = 255
	bigintMax          = 1<<63 - 1
	intMax             = 1<<31 - 1
	rechargeAmountMax  = 1_000_000
	healthCheckTimeout = time.Second
)

// handler answers a request or returns the problem (or error) that answers it instead.
type handler func(w http.ResponseWriter, r *http.Request, params []string) error

func writeJSON(w http.ResponseWriter, status int, body []byte, cacheState string) {
	h := w.Header()
	h["Content-Type"] = []string{"application/json"}
	h["Content-Length"] = []string{strconv.Itoa(len(body))}
	if cacheState != "" {
		h["X-Cache"] = []string{cacheState}
	}
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// pathID is server.path_id: a positive integer path parameter within max, else 422.
func pathID(raw, name string, max int64) (int64, error) {
	if len(raw) > 0 && len(raw) <= 19 && allDigits(raw) {
		if value, err := strconv.ParseInt(raw, 10, 64); err == nil && value >= 1 && value <= max {
			return value, nil
		}
	}
	return 0, newProblem(422, "VALIDATION_ERROR",
		name+" must be a positive integer up to "+strconv.FormatInt(max, 10), strMember("field", name))
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if !isDigit(s[i]) {
			return false
		}
	}
	return true
}

// ---------------------------------------------------------------- health

func (s *server) health(w http.ResponseWriter, r *http.Request, _ []string) error {
	ctx, cancel := context.WithTimeout(r.Context(), healthCheckTimeout)
	defer cancel()
	database, status, code := "ok", "ok", 200
	var one int
	if err := s.db.QueryRow(ctx, s.sql.ping).Scan(&one); err != nil {
		database, status, code = "down", "degraded", 503
	}
	cacheState := "ok"
	if !s.cache.ping(r.Context()) {
		cacheState, status = "down", "degraded"
	}
	body := `{"status":"` + status + `","database":"` + database + `","cache":"` + cacheState + `"}`
	writeJSON(w, code, []byte(body), "")
	return nil
}

// ---------------------------------------------------------------- cache-aside reads

// cached serves key from Redis, or loads it from PostgreSQL and fills Redis for ttl
// seconds (docs/design.md: cache-aside). A load's problem (404) is answered, not cached.
func (s *server) cached(w http.ResponseWriter, r *http.Request, key string, ttl int,
	load func(ctx context.Context) ([]byte, error)) error {
	name := s.cache.name(key)
	if body := s.cache.get(r.Context(), name); body != nil {
		writeJSON(w, 200, body, "HIT")
		return nil
	}
	ctx, cancel := context.WithTimeout(r.Context(), statementTimeout)
	defer cancel()
	body, err := load(ctx)
	if err != nil {
		return err
	}
	s.cache.set(r.Context(), name, ttl, body)
	writeJSON(w, 200, body, "MISS")
	return nil
}

func (s *server) tripsTotal(w http.ResponseWriter, r *http.Request, _ []string) error {
	return s.cached(w, r, keyTripsTotal, ttlTripsTotal, func(ctx context.Context) ([]byte, error) {
		var total, completed, active, revenue int64
		if err := s.db.QueryRow(ctx, s.sql.tripsTotal).Scan(&total, &completed, &active, &revenue); err != nil {
			return nil, err
		}
		b := append([]byte(`{"total_trips":`), strconv.FormatInt(total, 10)...)
		b = appendInt(append(b, `,"completed_trips":`...), completed)
		b = appendInt(append(b, `,"active_trips":`...), active)
		b = appendInt(append(b, `,"total_revenue":`...), revenue)
		return append(b, '}'), nil
	})
}

func (s *server) revenueTotal(w http.ResponseWriter, r *http.Request, _ []string) error {
	return s.cached(w, r, keyRevenueTotal, ttlRevenueTotal, func(ctx context.Context) ([]byte, error) {
		var revenue int64
		if err := s.db.QueryRow(ctx, s.sql.revenueTotal).Scan(&revenue); err != nil {
			return nil, err
		}
		b := appendInt([]byte(`{"total_revenue":`), revenue)
		return append(b, `,"currency":"COP"}`...), nil
	})
}

func (s *server) cardBalance(w http.ResponseWriter, r *http.Request, params []string) error {
	id, err := pathID(params[0], "card_id", bigintMax)
	if err != nil {
		return err
	}
	return s.cached(w, r, keyCardBalance(id), ttlCardBalance, func(ctx context.Context) ([]byte, error) {
		var cardID, balance int64
		var status string
		var lastUsed *time.Time
		err := s.db.QueryRow(ctx, s.sql.cardBalance, id).Scan(&cardID, &balance, &status, &lastUsed)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, newProblem(404, "CARD_NOT_FOUND", "no card with this id", intMember("card_id", id))
		} else if err != nil {
			return nil, err
		}
		b := appendInt([]byte(`{"card_id":`), cardID)
		b = appendInt(append(b, `,"balance":`...), balance)
		b = appendString(append(b, `,"status":`...), status)
		b = appendTime(append(b, `,"last_used_date":`...), lastUsed)
		return append(b, '}'), nil
	})
}

func (s *server) trip(w http.ResponseWriter, r *http.Request, params []string) error {
	id, err := pathID(params[0], "trip_id", bigintMax)
	if err != nil {
		return err
	}
	return s.cached(w, r, keyTrip(id), ttlTrip, func(ctx context.Context) ([]byte, error) {
		var t struct {
			tripID, cardID            int64
			vehicleID                 *int64
			routeID, boardingStation  int64
			disembarkingStation       *int64
			boardingTime              time.Time
			disembarkingTime          *time.Time
			fareID, fareCharged       int64
			isTransfer                bool
			transferGroupID, driverID *int64
		}
		err := s.db.QueryRow(ctx, s.sql.trip, id).Scan(&t.tripID, &t.cardID, &t.vehicleID, &t.routeID,
			&t.boardingStation, &t.disembarkingStation, &t.boardingTime, &t.disembarkingTime, &t.fareID,
			&t.fareCharged, &t.isTransfer, &t.transferGroupID, &t.driverID)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, newProblem(404, "TRIP_NOT_FOUND", "no trip with this id", intMember("trip_id", id))
		} else if err != nil {
			return nil, err
		}
		b := appendInt([]byte(`{"trip_id":`), t.tripID)
		b = appendInt(append(b, `,"card_id":`...), t.cardID)
		b = appendNullInt(append(b, `,"vehicle_id":`...), t.vehicleID)
		b = appendInt(append(b, `,"route_id":`...), t.routeID)
		b = appendInt(append(b, `,"boarding_station_id":`...), t.boardingStation)
		b = appendNullInt(append(b, `,"disembarking_station_id":`...), t.disembarkingStation)
		b = appendTime(append(b, `,"boarding_time":`...), &t.boardingTime)
		b = appendTime(append(b, `,"disembarking_time":`...), t.disembarkingTime)
		b = appendInt(append(b, `,"fare_id":`...), t.fareID)
		b = appendInt(append(b, `,"fare_charged":`...), t.fareCharged)
		b = appendBool(append(b, `,"is_transfer":`...), t.isTransfer)
		b = appendNullInt(append(b, `,"transfer_group_id":`...), t.transferGroupID)
		b = appendNullInt(append(b, `,"driver_id":`...), t.driverID)
		return append(b, '}'), nil
	})
}

// ---------------------------------------------------------------- uncached reads

func (s *server) count(query string) handler {
	return func(w http.ResponseWriter, r *http.Request, _ []string) error {
		ctx, cancel := context.WithTimeout(r.Context(), statementTimeout)
		defer cancel()
		var n int64
		if err := s.db.QueryRow(ctx, query).Scan(&n); err != nil {
			return err
		}
		writeJSON(w, 200, append(appendInt([]byte(`{"count":`), n), '}'), "")
		return nil
	}
}

// ---------------------------------------------------------------- writes

var (
	rechargeFields = []intField{
		{name: "card_id", min: 1, max: bigintMax},
		{name: "amount", min: 1, max: rechargeAmountMax},
		{name: "recharge_point_id", min: 1, max: intMax, optional: true},
	}
	boardFields = []intField{
		{name: "card_id", min: 1, max: bigintMax},
		{name: "route_id", min: 1, max: intMax},
		{name: "boarding_station_id", min: 1, max: intMax},
	}
)

// readBody is server.read_body: 415 unless JSON, 413 past 64 KiB, 400 if not JSON, 422 if
// the JSON does not fit fields. It returns each field's value and whether it was given.
func readBody(r *http.Request, fields []intField) ([]int64, []bool, error) {
	contentType := r.Header.Get("Content-Type")
	if i := strings.IndexByte(contentType, ';'); i >= 0 {
		contentType = contentType[:i]
	}
	if strings.ToLower(strings.TrimFunc(contentType, pyWhitespace)) != "application/json" {
		return nil, nil, newProblem(415, "UNSUPPORTED_MEDIA_TYPE", "send the body as application/json")
	}
	tooLarge := newProblem(413, "BODY_TOO_LARGE", "the body may hold at most "+strconv.Itoa(maxBody)+" bytes")
	if r.ContentLength > maxBody {
		return nil, nil, tooLarge
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return nil, nil, err
	}
	if len(body) > maxBody {
		return nil, nil, tooLarge
	}
	parsed, err := parseJSON(body)
	if err != nil {
		return nil, nil, newProblem(400, "MALFORMED_JSON", "the body is not valid JSON: "+err.Error())
	}
	values, present := make([]int64, len(fields)), make([]bool, len(fields))
	if msg := validate(parsed, fields, values, present); msg != "" {
		return nil, nil, newProblem(422, "VALIDATION_ERROR", msg)
	}
	return values, present, nil
}

// idempotencyKey is server.idempotency_key: one header, 1..255 printable ASCII characters,
// no surrounding spaces; refused (422) otherwise.
func idempotencyKey(r *http.Request) (*string, error) {
	keys := r.Header.Values("Idempotency-Key")
	if len(keys) == 0 {
		return nil, nil
	}
	field := strMember("field", "Idempotency-Key")
	if len(keys) > 1 {
		return nil, newProblem(422, "VALIDATION_ERROR", "send one Idempotency-Key header, not several", field)
	}
	key := keys[0]
	ok := len(key) >= 1 && len(key) <= idempotencyKeyMax && key == strings.TrimFunc(key, pyWhitespace)
	for i := 0; ok && i < len(key); i++ {
		ok = key[i] >= 0x20 && key[i] < 0x7f
	}
	if !ok {
		return nil, newProblem(422, "VALIDATION_ERROR", "Idempotency-Key must be 1.."+
			strconv.Itoa(idempotencyKeyMax)+" printable ASCII characters, without leading or trailing spaces", field)
	}
	return &key, nil
}

func (s *server) createRecharge(w http.ResponseWriter, r *http.Request, _ []string) error {
	c, err := s.authorize(r, "recharge_point")
	if err != nil {
		return err
	}
	values, present, err := readBody(r, rechargeFields)
	if err != nil {
		return err
	}
	key, err := idempotencyKey(r)
	if err != nil {
		return err
	}
	var point *int64
	if present[2] {
		point = &values[2]
	}
	if c.role == "recharge_point" {
		if point != nil && (c.rechargePointID == nil || *point != *c.rechargePointID) {
			return newProblem(403, "FORBIDDEN", "a recharge point token recharges at its own point only")
		}
		point = c.rechargePointID
	}
	ctx, cancel := context.WithTimeout(r.Context(), statementTimeout)
	defer cancel()
	var rc struct {
		rechargeID, cardID, amount, balance int64
		at                                  time.Time
		pointID                             *int64
		userID                              int64
		replayed                            bool
	}
	err = s.db.QueryRow(ctx, s.sql.rechargeCard, values[0], values[1], point, c.tokenID, key).Scan(
		&rc.rechargeID, &rc.cardID, &rc.amount, &rc.balance, &rc.at, &rc.pointID, &rc.userID, &rc.replayed)
	if err != nil {
		return err
	}
	// Committed. A replay invalidates too: it may answer before the first request's DEL.
	s.invalidated(r.Context(), afterRecharge(rc.cardID, rc.userID))
	b := appendInt([]byte(`{"recharge_id":`), rc.rechargeID)
	b = appendInt(append(b, `,"card_id":`...), rc.cardID)
	b = appendInt(append(b, `,"amount":`...), rc.amount)
	b = appendInt(append(b, `,"balance":`...), rc.balance)
	b = appendTime(append(b, `,"recharge_timestamp":`...), &rc.at)
	b = appendNullInt(append(b, `,"recharge_point_id":`...), rc.pointID)
	b = append(b, '}')
	if rc.replayed {
		w.Header()["Idempotent-Replayed"] = []string{"true"}
	}
	writeJSON(w, 201, b, "")
	return nil
}

func (s *server) board(w http.ResponseWriter, r *http.Request, _ []string) error {
	if _, err := s.authorize(r, "validator"); err != nil {
		return err
	}
	values, _, err := readBody(r, boardFields)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(r.Context(), statementTimeout)
	defer cancel()
	var t struct {
		tripID, cardID, routeID, stationID int64
		at                                 time.Time
		fareID, fareCharged                int64
		isTransfer                         bool
		transferGroupID                    *int64
		balance                            int64
	}
	err = s.db.QueryRow(ctx, s.sql.boardTrip, values[0], values[1], values[2]).Scan(&t.tripID, &t.cardID,
		&t.routeID, &t.stationID, &t.at, &t.fareID, &t.fareCharged, &t.isTransfer, &t.transferGroupID, &t.balance)
	if err != nil {
		return err
	}
	s.invalidated(r.Context(), afterBoarding(t.cardID))
	b := appendInt([]byte(`{"trip_id":`), t.tripID)
	b = appendInt(append(b, `,"card_id":`...), t.cardID)
	b = appendInt(append(b, `,"route_id":`...), t.routeID)
	b = appendInt(append(b, `,"boarding_station_id":`...), t.stationID)
	b = appendTime(append(b, `,"boarding_time":`...), &t.at)
	b = appendInt(append(b, `,"fare_id":`...), t.fareID)
	b = appendInt(append(b, `,"fare_charged":`...), t.fareCharged)
	b = appendBool(append(b, `,"is_transfer":`...), t.isTransfer)
	b = appendNullInt(append(b, `,"transfer_group_id":`...), t.transferGroupID)
	b = appendInt(append(b, `,"balance":`...), t.balance)
	writeJSON(w, 201, append(b, '}'), "")
	return nil
}

// invalidated is server.invalidated: invalidate what a committed write made stale before its
// answer goes out; if Redis did not take it, move every instance's cache to a new epoch, so
// that what Redis still holds is never read again. The write stands whatever happens here.
func (s *server) invalidated(ctx context.Context, keys []string) {
	if s.cache.invalidate(ctx, keys) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), statementTimeout)
	defer cancel()
	var epoch int64
	if err := s.db.QueryRow(ctx, s.sql.bumpCacheEpoch).Scan(&epoch); err != nil {
		logf("cache epoch not bumped after a failed invalidation: %v", err)
		return
	}
	s.raiseEpoch(epoch)
}

// ---------------------------------------------------------------- encoding

func appendInt(b []byte, v int64) []byte { return strconv.AppendInt(b, v, 10) }

func appendNullInt(b []byte, v *int64) []byte {
	if v == nil {
		return append(b, "null"...)
	}
	return strconv.AppendInt(b, *v, 10)
}

func appendBool(b []byte, v bool) []byte {
	if v {
		return append(b, "true"...)
	}
	return append(b, "false"...)
}

// appendTime writes a timestamptz as msgspec writes the UTC datetime asyncpg gives:
// RFC 3339 with "Z", microseconds only when there are any.
func appendTime(b []byte, t *time.Time) []byte {
	if t == nil {
		return append(b, "null"...)
	}
	u := t.UTC()
	b = append(b, '"')
	if u.Nanosecond()/1000 == 0 {
		b = u.AppendFormat(b, "2006-01-02T15:04:05")
	} else {
		b = u.AppendFormat(b, "2006-01-02T15:04:05.000000")
	}
	return append(b, 'Z', '"')
}
