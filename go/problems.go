package main

import (
	"errors"
	"net/http"
	"strconv"
	"strings"

	"github.com/jackc/pgconn"
)

// problem is an RFC 9457 error answer, spelled as errors.py's Problem: a status, a stable
// code, a detail for people, and extra members that follow them in the body.
type problem struct {
	status  int
	code    string
	detail  string
	extra   []member // in order; names already in the body are skipped, as Python does
	headers map[string]string
}

// member is one extra member of a problem; raw is its value, already JSON.
type member struct {
	name string
	raw  []byte
}

func (p *problem) Error() string { return p.code + ": " + p.detail }

func newProblem(status int, code, detail string, extra ...member) *problem {
	return &problem{status: status, code: code, detail: detail, extra: extra}
}

func (p *problem) with(name, value string) *problem {
	if p.headers == nil {
		p.headers = map[string]string{}
	}
	p.headers[name] = value
	return p
}

func intMember(name string, value int64) member {
	return member{name, strconv.AppendInt(nil, value, 10)}
}

func strMember(name, value string) member {
	return member{name, appendString(nil, value)}
}

// titles are errors.py's TITLES.
var titles = map[int]string{
	400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden",
	404: "Not Found", 405: "Method Not Allowed", 409: "Conflict", 413: "Content Too Large",
	415: "Unsupported Media Type", 422: "Unprocessable Content",
	431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable",
}

// body encodes the problem as msgspec encodes Python's dict: type, title, status, code,
// detail (when not empty), then the extra members.
func (p *problem) body() []byte {
	b := make([]byte, 0, 192)
	b = append(b, `{"type":`...)
	if p.code == "" {
		b = appendString(b, "about:blank")
	} else {
		b = appendString(b, "/problems/"+strings.ReplaceAll(strings.ToLower(p.code), "_", "-"))
	}
	title, ok := titles[p.status]
	if !ok {
		title = "Error"
	}
	b = append(b, `,"title":`...)
	b = appendString(b, title)
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(p.status), 10)
	b = append(b, `,"code":`...)
	b = appendString(b, p.code)
	if p.detail != "" {
		b = append(b, `,"detail":`...)
		b = appendString(b, p.detail)
	}
	for _, m := range p.extra {
		switch m.name {
		case "type", "title", "status", "code":
			continue
		case "detail":
			if p.detail != "" {
				continue
			}
		}
		b = append(b, ',')
		b = appendString(b, m.name)
		b = append(b, ':')
		b = append(b, m.raw...)
	}
	return append(b, '}')
}

func (p *problem) write(w http.ResponseWriter) {
	h := w.Header()
	for name, value := range p.headers {
		h.Set(name, value)
	}
	h.Set("Content-Type", "application/problem+json")
	w.WriteHeader(p.status)
	_, _ = w.Write(p.body())
}

// ---------------------------------------------------------------- PostgreSQL errors

// sqlstateProblems is errors.py's SQLSTATE_PROBLEMS: our own "TR..." refusals raised by
// sql/functions.sql, and two standard ones.
var sqlstateProblems = map[string]struct {
	status int
	code   string
}{
	"TRN01": {404, "CARD_NOT_FOUND"},
	"TRN02": {404, "TRIP_NOT_FOUND"},
	"TRN03": {404, "USER_NOT_FOUND"},
	"TRN04": {404, "ROUTE_NOT_FOUND"},
	"TRN05": {404, "STATION_NOT_FOUND"},
	"TRN06": {404, "RECHARGE_POINT_NOT_FOUND"},
	"TRN07": {404, "TOKEN_NOT_FOUND"},
	"TRC01": {409, "CARD_NOT_ACTIVE"},
	"TRC02": {409, "TRIP_ALREADY_ENDED"},
	"TRC03": {409, "ROUTE_NOT_ACTIVE"},
	"TRC04": {409, "BALANCE_LIMIT"},
	"TRC05": {409, "LAST_ADMIN_TOKEN"},
	"TRP01": {402, "INSUFFICIENT_BALANCE"},
	"TRI01": {422, "IDEMPOTENCY_KEY_REUSED"},
	"TRF01": {503, "FARE_NOT_CONFIGURED"},
	"23505": {409, "ALREADY_EXISTS"},
	"23514": {422, "VALIDATION_ERROR"},
}

// sqlstateClassProblems is errors.py's SQLSTATE_CLASS_PROBLEMS: any other SQLSTATE by class.
var sqlstateClassProblems = map[string]struct {
	status       int
	code, detail string
}{
	"22": {422, "VALIDATION_ERROR", "a value is out of range or malformed"},
	"23": {409, "CONFLICT", "the write conflicts with the data it refers to"},
	"40": {503, "TRANSACTION_CONFLICT", "a concurrent write got in the way; retry"},
	"55": {503, "TRANSACTION_CONFLICT", "a lock or object is busy; retry"},
	"54": {422, "VALIDATION_ERROR", "a value is too large to process"},
	"08": {503, "DATABASE_UNAVAILABLE", "the database cannot be reached; retry shortly"},
	"25": {503, "DATABASE_UNAVAILABLE", "the database is read-only or busy; retry shortly"},
	"53": {503, "DATABASE_UNAVAILABLE", "the database is out of resources; retry shortly"},
	"57": {503, "DATABASE_UNAVAILABLE", "the database is shutting down or cancelled the request; retry"},
	"58": {503, "DATABASE_UNAVAILABLE", "the database had a system error; retry shortly"},
	"XX": {503, "DATABASE_UNAVAILABLE", "the database had an internal error; retry shortly"},
}

var retryAfter = map[string]string{"TRANSACTION_CONFLICT": "1", "DATABASE_UNAVAILABLE": "2"}

var (
	internalError = func() *problem {
		return newProblem(500, "INTERNAL_ERROR", "the request could not be completed")
	}
	databaseUnavailable = func() *problem {
		return newProblem(503, "DATABASE_UNAVAILABLE", "the database cannot be reached; retry shortly").with("Retry-After", "2")
	}
)

// fromDatabase turns what a statement returned as an error into the problem Python answers:
// a PostgreSQL refusal by its SQLSTATE (never by its message), anything else (a refused
// connection, a timeout, a pool closing) as 503 DATABASE_UNAVAILABLE.
func fromDatabase(err error) *problem {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		logf("database unavailable: %v", err)
		return databaseUnavailable()
	}
	state := pgErr.Code
	mapped, ok := sqlstateProblems[state]
	if !ok {
		byClass, ok := sqlstateClassProblems[state[:2]]
		if !ok {
			logf("unmapped PostgreSQL error %s", state)
			return internalError()
		}
		logf("PostgreSQL error %s answered as %d %s", state, byClass.status, byClass.code)
		p := newProblem(byClass.status, byClass.code, byClass.detail, strMember("sqlstate", state))
		if retry, ok := retryAfter[byClass.code]; ok {
			p.with("Retry-After", retry)
		}
		return p
	}
	if strings.HasPrefix(state, "TR") {
		// A domain refusal: its message, and its DETAIL (a JSON object) as members.
		p := newProblem(mapped.status, mapped.code, pgErr.Message)
		if pgErr.Detail != "" {
			members, perr := objectMembers([]byte(pgErr.Detail))
			if perr != nil {
				logf("refusal %s with a DETAIL that is not a JSON object", state)
				return internalError()
			}
			p.extra = members
		}
		return p
	}
	detail := "a unique field is already taken"
	if state == "23514" {
		detail = "a value is out of range"
	}
	return newProblem(mapped.status, mapped.code, detail, strMember("constraint", pgErr.ConstraintName))
}
