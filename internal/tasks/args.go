package tasks

import (
	"encoding/json"
	"fmt"
	"math/big"
	"strconv"
	"strings"
)

// Value returns the argument at position pos, or else the keyword argument name, the way a
// Python function binds its parameters. pos < 0 means keyword-only.
func (r *Request) Value(pos int, name string) (any, bool) {
	if pos >= 0 && pos < len(r.Args) {
		return r.Args[pos], true
	}
	if v, ok := r.Kwargs[name]; ok {
		return v, true
	}
	return nil, false
}

func (r *Request) required(pos int, name string) (any, error) {
	v, ok := r.Value(pos, name)
	if !ok {
		return nil, TypeError("%s() missing required argument: '%s'", r.Name, name)
	}
	return v, nil
}

// Number returns a numeric argument as a json.Number, keeping integers exact.
func (r *Request) Number(pos int, name string) (json.Number, error) {
	v, err := r.required(pos, name)
	if err != nil {
		return "", err
	}
	switch n := v.(type) {
	case json.Number:
		return n, nil
	case float64:
		return json.Number(strconv.FormatFloat(n, 'g', -1, 64)), nil
	case int:
		return json.Number(strconv.Itoa(n)), nil
	case int64:
		return json.Number(strconv.FormatInt(n, 10)), nil
	}
	return "", TypeError("%s() argument '%s' must be a number, not %s", r.Name, name, pyTypeName(v))
}

// Float returns a numeric argument as float64.
func (r *Request) Float(pos int, name string) (float64, error) {
	n, err := r.Number(pos, name)
	if err != nil {
		return 0, err
	}
	f, perr := strconv.ParseFloat(string(n), 64)
	if perr != nil {
		return 0, ValueError("%s() argument '%s': %v", r.Name, name, perr)
	}
	return f, nil
}

// Int returns an integral argument as int64; a float with a fraction is a TypeError.
func (r *Request) Int(pos int, name string) (int64, error) {
	n, err := r.Number(pos, name)
	if err != nil {
		return 0, err
	}
	i, perr := strconv.ParseInt(string(n), 10, 64)
	if perr != nil {
		return 0, TypeError("%s() argument '%s' must be an integer, not %s", r.Name, name, string(n))
	}
	return i, nil
}

// String returns a string argument.
func (r *Request) String(pos int, name string) (string, error) {
	v, err := r.required(pos, name)
	if err != nil {
		return "", err
	}
	s, ok := v.(string)
	if !ok {
		return "", TypeError("%s() argument '%s' must be str, not %s", r.Name, name, pyTypeName(v))
	}
	return s, nil
}

// IsInteger reports whether n is written as a Python int (no fraction, no exponent).
func IsInteger(n json.Number) bool {
	s := string(n)
	return s != "" && !strings.ContainsAny(s, ".eEnN") && s != "Infinity" && s != "-Infinity"
}

// AddNumbers adds two JSON numbers with Python's rules: int + int stays an exact integer of
// any size (returned as json.Number); anything with a float gives a float64.
func AddNumbers(a, b json.Number) (any, error) {
	if IsInteger(a) && IsInteger(b) {
		x, okx := new(big.Int).SetString(string(a), 10)
		y, oky := new(big.Int).SetString(string(b), 10)
		if okx && oky {
			return json.Number(x.Add(x, y).String()), nil
		}
	}
	fa, err := strconv.ParseFloat(string(a), 64)
	if err != nil {
		return nil, fmt.Errorf("tasks: %q is not a number: %w", a, err)
	}
	fb, err := strconv.ParseFloat(string(b), 64)
	if err != nil {
		return nil, fmt.Errorf("tasks: %q is not a number: %w", b, err)
	}
	return fa + fb, nil
}

func pyTypeName(v any) string {
	switch v.(type) {
	case nil:
		return "NoneType"
	case bool:
		return "bool"
	case string:
		return "str"
	case []any:
		return "list"
	case map[string]any:
		return "dict"
	case json.Number, float64:
		return "number"
	}
	return fmt.Sprintf("%T", v)
}
