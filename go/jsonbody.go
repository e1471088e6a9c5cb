package main

// Request bodies are decoded the way the Python service's msgspec decoder does it, so that
// a bad body gets the same status and the same words from both: 400 MALFORMED_JSON with
// msgspec's own message and byte offset, 422 VALIDATION_ERROR with its validation message.
// encoding/json would accept and refuse the same bodies, but say it differently.
//
// server.read_body decodes typed first and, on a validation error, decodes the whole body
// untyped to tell a malformed body (400) from a misfit (422). Parsing everything untyped
// first and validating the parsed value after gives the same answers in one pass.

import (
	"fmt"
	"strconv"
	"unicode/utf8"
)

type kind uint8

const (
	kNull kind = iota
	kBool
	kInt
	kFloat
	kStr
	kArray
	kObject
)

// msgspec's names for what a value is, in "Expected `int`, got `str`".
var kindNames = [...]string{"null", "bool", "int", "float", "str", "array", "object"}

type jsonValue struct {
	kind kind
	// ints: int64 when it fits; big holds the sign of one that does not
	i       int64
	big     bool
	neg     bool
	s       string
	entries []entry // objects, in order (duplicates kept: the last one wins, as in msgspec)
	raw     []byte  // the value's bytes, for objectMembers
}

type entry struct {
	key   string
	value *jsonValue
}

// malformed is a body that is not JSON: its message is msgspec's.
type malformed struct{ msg string }

func (m *malformed) Error() string { return m.msg }

const maxDepth = 900 // Python's recursion limit stops msgspec near here (never exactly there)

type parser struct {
	buf   []byte
	pos   int
	depth int
	path  []string // for "Number out of range - at `$[...]`"
}

func (p *parser) invalid(msg string) error {
	return &malformed{fmt.Sprintf("JSON is malformed: %s (byte %d)", msg, p.pos)}
}

var errTruncated = &malformed{"Input data was truncated"}

// parseJSON parses a whole document, as msgspec.json.Decoder().decode would.
func parseJSON(buf []byte) (*jsonValue, error) {
	p := &parser{buf: buf}
	v, err := p.value()
	if err != nil {
		return nil, err
	}
	for p.pos < len(p.buf) {
		c := p.buf[p.pos]
		p.pos++
		if c != ' ' && c != '\n' && c != '\t' && c != '\r' {
			return nil, p.invalid("trailing characters")
		}
	}
	return v, nil
}

func (p *parser) peek() (byte, error) {
	for p.pos < len(p.buf) {
		c := p.buf[p.pos]
		if c != ' ' && c != '\n' && c != '\r' && c != '\t' {
			return c, nil
		}
		p.pos++
	}
	return 0, errTruncated
}

func (p *parser) value() (*jsonValue, error) {
	c, err := p.peek()
	if err != nil {
		return nil, err
	}
	start := p.pos
	var v *jsonValue
	switch c {
	case 'n':
		v, err = p.literal("ull", &jsonValue{kind: kNull})
	case 't':
		v, err = p.literal("rue", &jsonValue{kind: kBool})
	case 'f':
		v, err = p.literal("alse", &jsonValue{kind: kBool})
	case '[':
		v, err = p.array()
	case '{':
		v, err = p.object()
	case '"':
		var s string
		s, err = p.str()
		v = &jsonValue{kind: kStr, s: s}
	default:
		v, err = p.number()
	}
	if err != nil {
		return nil, err
	}
	v.raw = p.buf[start:p.pos]
	return v, nil
}

// literal: msgspec reads the remaining letters at once and only then compares them.
func (p *parser) literal(rest string, v *jsonValue) (*jsonValue, error) {
	p.pos++
	if len(p.buf)-p.pos < len(rest) {
		return nil, errTruncated
	}
	got := string(p.buf[p.pos : p.pos+len(rest)])
	p.pos += len(rest)
	if got != rest {
		return nil, p.invalid("invalid character")
	}
	return v, nil
}

func (p *parser) enter() error {
	p.depth++
	if p.depth > maxDepth {
		return &malformed{"maximum recursion depth exceeded while deserializing an object"}
	}
	return nil
}

// members reads an array or an object from its opening byte to its closing byte end, as
// msgspec does: each member is read by member (i counts them from 0; c is its first byte,
// past the comma, never end). what names the container in the trailing-comma message.
func (p *parser) members(end byte, what string, member func(i int, c byte) error) error {
	p.pos++
	if err := p.enter(); err != nil {
		return err
	}
	defer func() { p.depth-- }()
	for i := 0; ; i++ {
		c, err := p.peek()
		if err != nil {
			return err
		}
		if c == end {
			p.pos++
			return nil
		} else if c == ',' && i != 0 {
			p.pos++
			if c, err = p.peek(); err != nil {
				return err
			}
		} else if i != 0 {
			return p.invalid("expected ',' or '" + string(end) + "'")
		}
		if c == end {
			return p.invalid("trailing comma in " + what)
		}
		if err := member(i, c); err != nil {
			return err
		}
	}
}

func (p *parser) array() (*jsonValue, error) {
	v := &jsonValue{kind: kArray}
	err := p.members(']', "array", func(i int, _ byte) error {
		p.path = append(p.path, "["+strconv.Itoa(i)+"]")
		_, err := p.value()
		p.path = p.path[:len(p.path)-1]
		return err
	})
	if err != nil {
		return nil, err
	}
	return v, nil
}

func (p *parser) object() (*jsonValue, error) {
	v := &jsonValue{kind: kObject}
	err := p.members('}', "object", func(_ int, c byte) error {
		if c != '"' {
			return p.invalid("object keys must be strings")
		}
		key, err := p.str()
		if err != nil {
			return err
		}
		if c, err = p.peek(); err != nil {
			return err
		}
		if c != ':' {
			return p.invalid("expected ':'")
		}
		p.pos++
		p.path = append(p.path, "[...]")
		value, err := p.value()
		p.path = p.path[:len(p.path)-1]
		if err != nil {
			return err
		}
		v.entries = append(v.entries, entry{key, value})
		return nil
	})
	if err != nil {
		return nil, err
	}
	return v, nil
}

// escapeLetter is the letter of the one-letter escape that an encoded string writes for a
// byte (0: none; a control character without one is written \u00XX).
var escapeLetter = [256]byte{'"': '"', '\\': '\\', '\b': 'b', '\f': 'f', '\n': 'n', '\r': 'r', '\t': 't'}

// escaped is the byte that each one-letter escape of JSON stands for (0: not one).
var escaped = [256]byte{'"': '"', '\\': '\\', '/': '/', 'b': '\b', 'f': '\f', 'n': '\n', 'r': '\r', 't': '\t'}

// str reads a string at '"' and returns its text; like Python it refuses bytes that are
// not UTF-8 (with CPython's UnicodeDecodeError message) once the string is whole.
func (p *parser) str() (string, error) {
	p.pos++
	var out []byte
	start := p.pos
	for {
		if p.pos >= len(p.buf) {
			return "", errTruncated
		}
		c := p.buf[p.pos]
		switch {
		case c == '"':
			out = append(out, p.buf[start:p.pos]...)
			p.pos++
			if err := checkUTF8(out); err != nil {
				return "", err
			}
			return string(out), nil
		case c == '\\':
			out = append(out, p.buf[start:p.pos]...)
			p.pos++
			if p.pos >= len(p.buf) {
				return "", errTruncated
			}
			e := p.buf[p.pos]
			p.pos++
			switch {
			case escaped[e] != 0:
				out = append(out, escaped[e])
			case e == 'u':
				r, err := p.unicodeEscape()
				if err != nil {
					return "", err
				}
				out = utf8.AppendRune(out, r)
			default:
				return "", p.invalid("invalid escape character in string")
			}
			start = p.pos
		case c < 0x20:
			return "", p.invalid("invalid character")
		default:
			p.pos++
		}
	}
}

func (p *parser) codepoint() (rune, error) {
	if len(p.buf)-p.pos < 4 {
		return 0, errTruncated
	}
	var cp rune
	for i := 0; i < 4; i++ {
		c := p.buf[p.pos]
		p.pos++
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			c = c - 'A' + 10
		default:
			return 0, p.invalid("invalid character in unicode escape")
		}
		cp = cp<<4 + rune(c)
	}
	return cp, nil
}

func (p *parser) unicodeEscape() (rune, error) {
	cp, err := p.codepoint()
	if err != nil {
		return 0, err
	}
	if cp >= 0xDC00 && cp <= 0xDFFF {
		return 0, p.invalid("invalid utf-16 surrogate pair")
	}
	if cp >= 0xD800 && cp <= 0xDBFF {
		if len(p.buf)-p.pos < 6 {
			return 0, errTruncated
		}
		if p.buf[p.pos] != '\\' || p.buf[p.pos+1] != 'u' {
			return 0, p.invalid("unexpected end of escaped utf-16 surrogate pair")
		}
		p.pos += 2
		low, err := p.codepoint()
		if err != nil {
			return 0, err
		}
		if low < 0xDC00 || low > 0xDFFF {
			return 0, p.invalid("invalid utf-16 surrogate pair")
		}
		cp = 0x10000 + ((cp-0xD800)<<10 | (low - 0xDC00))
	}
	return cp, nil
}

// number follows msgspec's parse_number_inline: the same grammar, errors and offsets.
func (p *parser) number() (*jsonValue, error) {
	b, n := p.buf, len(p.buf)
	start := p.pos
	neg := false
	if b[p.pos] == '-' {
		p.pos++
		if p.pos == n {
			return nil, p.invalid("invalid number")
		}
		neg = true
	}
	intStart := p.pos
	if b[p.pos] == '0' {
		p.pos++
		if p.pos != n && isDigit(b[p.pos]) {
			return nil, p.invalid("invalid number")
		}
	} else {
		for p.pos < n && isDigit(b[p.pos]) {
			p.pos++
		}
		if p.pos == intStart {
			return nil, p.invalid("invalid character")
		}
	}
	isFloat := false
	if p.pos < n && b[p.pos] == '.' {
		isFloat = true
		p.pos++
		fracStart := p.pos
		for p.pos < n && isDigit(b[p.pos]) {
			p.pos++
		}
		if p.pos == fracStart {
			return nil, p.invalid("invalid number")
		}
	}
	if p.pos < n && (b[p.pos] == 'e' || b[p.pos] == 'E') {
		isFloat = true
		p.pos++
		if p.pos == n {
			return nil, p.invalid("invalid number")
		}
		if b[p.pos] == '+' || b[p.pos] == '-' {
			p.pos++
		}
		expStart := p.pos
		for p.pos < n && isDigit(b[p.pos]) {
			p.pos++
		}
		if p.pos == expStart {
			return nil, p.invalid("invalid number")
		}
	}
	text := string(b[start:p.pos])
	if isFloat {
		f, err := strconv.ParseFloat(text, 64)
		if err != nil && (f > 1e308 || f < -1e308) {
			at := ""
			if len(p.path) > 0 {
				at = " - at `$"
				for _, part := range p.path {
					at += part
				}
				at += "`"
			}
			return nil, &malformed{"Number out of range" + at}
		}
		return &jsonValue{kind: kFloat}, nil
	}
	i, err := strconv.ParseInt(text, 10, 64)
	if err != nil { // out of int64: Python keeps it as an int all the same
		return &jsonValue{kind: kInt, big: true, neg: neg}, nil
	}
	return &jsonValue{kind: kInt, i: i, neg: neg}, nil
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// checkUTF8 refuses what CPython's UTF-8 decoder refuses, in its words.
func checkUTF8(s []byte) error {
	for i := 0; i < len(s); {
		c := s[i]
		if c < 0x80 {
			i++
			continue
		}
		var need int
		lo, hi := byte(0x80), byte(0xBF)
		switch {
		case c >= 0xC2 && c <= 0xDF:
			need = 1
		case c >= 0xE0 && c <= 0xEF:
			need = 2
			if c == 0xE0 {
				lo = 0xA0
			} else if c == 0xED {
				hi = 0x9F
			}
		case c >= 0xF0 && c <= 0xF4:
			need = 3
			if c == 0xF0 {
				lo = 0x90
			} else if c == 0xF4 {
				hi = 0x8F
			}
		default:
			return utf8Error(s[i], i, i+1, "invalid start byte")
		}
		for k := 1; k <= need; k++ {
			if i+k >= len(s) {
				return utf8Error(c, i, len(s), "unexpected end of data")
			}
			d := s[i+k]
			if (k == 1 && (d < lo || d > hi)) || (k > 1 && (d < 0x80 || d > 0xBF)) {
				return utf8Error(c, i, i+k, "invalid continuation byte")
			}
		}
		i += need + 1
	}
	return nil
}

func utf8Error(c byte, start, end int, reason string) error {
	if end-start == 1 {
		return &malformed{fmt.Sprintf("'utf-8' codec can't decode byte 0x%02x in position %d: %s", c, start, reason)}
	}
	return &malformed{fmt.Sprintf("'utf-8' codec can't decode bytes in position %d-%d: %s", start, end-1, reason)}
}

// objectMembers parses a JSON object (a refusal's DETAIL) into problem members, in order,
// each value re-encoded compactly as msgspec would after decoding it.
func objectMembers(doc []byte) ([]member, error) {
	v, err := parseJSON(doc)
	if err != nil {
		return nil, err
	}
	if v.kind != kObject {
		return nil, fmt.Errorf("not an object")
	}
	members := make([]member, 0, len(v.entries))
	for _, e := range v.entries {
		members = append(members, member{e.key, compact(e.value)})
	}
	return members, nil
}

// compact re-encodes a parsed value without insignificant space (strings re-escaped).
func compact(v *jsonValue) []byte {
	switch v.kind {
	case kStr:
		return appendString(nil, v.s)
	case kObject:
		b := []byte{'{'}
		for i, e := range v.entries {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, e.key)
			b = append(b, ':')
			b = append(b, compact(e.value)...)
		}
		return append(b, '}')
	case kArray:
		// Not met in a DETAIL so far; re-parse the raw elements.
		sub, _ := parseArrayElements(v.raw)
		b := []byte{'['}
		for i, e := range sub {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, compact(e)...)
		}
		return append(b, ']')
	default:
		return v.raw
	}
}

func parseArrayElements(raw []byte) ([]*jsonValue, error) {
	p := &parser{buf: raw}
	p.pos++
	var out []*jsonValue
	for i := 0; ; i++ {
		c, err := p.peek()
		if err != nil {
			return nil, err
		}
		if c == ']' {
			return out, nil
		}
		if c == ',' && i != 0 {
			p.pos++
		}
		v, err := p.value()
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
}

// ---------------------------------------------------------------- validation

// intField is a field of a request body: a bounded integer, required or nullable.
type intField struct {
	name     string
	min, max int64
	optional bool // `X | None = None`: may be null or absent
}

// validate checks an object against fields as msgspec does for a Struct with
// forbid_unknown_fields: members in order (unknown ones refused), then the required fields
// missing, in declaration order. It returns the values (0 when null or absent) or the
// validation message.
func validate(v *jsonValue, fields []intField, out []int64, present []bool) string {
	if v.kind != kObject {
		return "Expected `object`, got `" + kindNames[v.kind] + "`"
	}
	for _, e := range v.entries {
		index := -1
		for i := range fields {
			if fields[i].name == e.key {
				index = i
				break
			}
		}
		if index < 0 {
			return "Object contains unknown field `" + e.key + "`"
		}
		f, x := fields[index], e.value
		at := " - at `$." + f.name + "`"
		if x.kind == kNull && f.optional {
			out[index], present[index] = 0, false
			continue
		}
		if x.kind != kInt {
			expected := "int"
			if f.optional {
				expected = "int | null"
			}
			return "Expected `" + expected + "`, got `" + kindNames[x.kind] + "`" + at
		}
		if (x.big && x.neg) || (!x.big && x.i < f.min) {
			return "Expected `int` >= " + strconv.FormatInt(f.min, 10) + at
		}
		if x.big || x.i > f.max {
			return "Expected `int` <= " + strconv.FormatInt(f.max, 10) + at
		}
		out[index], present[index] = x.i, true
	}
	for i, f := range fields {
		if !f.optional && !present[i] {
			return "Object missing required field `" + f.name + "`"
		}
	}
	return ""
}

// ---------------------------------------------------------------- encoding

// appendString appends s as a JSON string, escaped as msgspec escapes: '"', '\\' and
// control characters only (no HTML escaping, UTF-8 as is).
func appendString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		b = append(b, s[start:i]...)
		if letter := escapeLetter[c]; letter != 0 {
			b = append(b, '\\', letter)
		} else {
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xF])
		}
		start = i + 1
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
