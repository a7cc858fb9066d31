package mix

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
)

// Gen produces one argument value per message. seq is the message's number in the run
// (1, 2, …).
type Gen interface {
	Gen(r *rand.Rand, seq uint64) any
}

// Compile turns a YAML value into a generator. Plain values (numbers, strings, booleans,
// null, lists and maps) are sent as they are, with generators allowed anywhere inside; a
// map with a single key starting with "$" is a generator:
//
//	{$uniform: {min: 1, max: 5}}                 float in [min, max)
//	{$int: {min: 1, max: 5}}                     integer in [min, max]
//	{$normal: {mean: 2, stddev: 0.5, min: 0}}    clamped to [min, max] when given
//	{$lognormal: {median: 1.5, sigma: 0.6, max: 30}}
//	{$exponential: {mean: 2, max: 30}}
//	{$choice: [a, b, c]}                         one of them, uniformly
//	{$choice: {values: [a, b], weights: [9, 1]}}
//	{$seq: "run-{n}"}                            {n} is the message number
//	{$uuid: true}                                a random UUID string
//
// Floats drawn from distributions are rounded to 4 decimals.
func Compile(v any) (Gen, error) {
	switch x := v.(type) {
	case map[string]any:
		if len(x) == 1 {
			for k, arg := range x {
				if strings.HasPrefix(k, "$") {
					return compileGen(k, arg)
				}
			}
		}
		out := mapGen{}
		for k, e := range x {
			g, err := Compile(e)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", k, err)
			}
			out[k] = g
		}
		return out, nil
	case []any:
		out := make(listGen, len(x))
		for i, e := range x {
			g, err := Compile(e)
			if err != nil {
				return nil, fmt.Errorf("[%d]: %w", i, err)
			}
			out[i] = g
		}
		return out, nil
	case int:
		return constGen{int64(x)}, nil
	case nil, bool, string, float64, int64:
		return constGen{x}, nil
	}
	return nil, fmt.Errorf("unsupported value %v (%T)", v, v)
}

type constGen struct{ v any }

func (c constGen) Gen(*rand.Rand, uint64) any { return c.v }

type listGen []Gen

func (l listGen) Gen(r *rand.Rand, seq uint64) any {
	out := make([]any, len(l))
	for i, g := range l {
		out[i] = g.Gen(r, seq)
	}
	return out
}

type mapGen map[string]Gen

func (m mapGen) Gen(r *rand.Rand, seq uint64) any {
	out := make(map[string]any, len(m))
	// Draw in key order so that a seed gives the same values every run.
	for _, k := range slices.Sorted(maps.Keys(m)) {
		out[k] = m[k].Gen(r, seq)
	}
	return out
}

// dist is a float distribution clamped to [lo, hi].
type dist struct {
	draw   func(r *rand.Rand) float64
	lo, hi float64
	asInt  bool
}

func (d dist) Gen(r *rand.Rand, _ uint64) any {
	x := min(max(d.draw(r), d.lo), d.hi)
	if d.asInt {
		return int64(math.Round(x))
	}
	return math.Round(x*1e4) / 1e4
}

type seqGen string

func (s seqGen) Gen(_ *rand.Rand, seq uint64) any {
	return strings.ReplaceAll(string(s), "{n}", strconv.FormatUint(seq, 10))
}

type uuidGen struct{}

func (uuidGen) Gen(r *rand.Rand, _ uint64) any {
	var b [16]byte
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	const hex = "0123456789abcdef"
	out := make([]byte, 0, 36)
	for i, c := range b {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			out = append(out, '-')
		}
		out = append(out, hex[c>>4], hex[c&15])
	}
	return string(out)
}

type choiceGen struct {
	values  []Gen
	weights []float64
	total   float64
}

func (c choiceGen) Gen(r *rand.Rand, seq uint64) any {
	x := r.Float64() * c.total
	for i, w := range c.weights {
		if x < w {
			return c.values[i].Gen(r, seq)
		}
		x -= w
	}
	return c.values[len(c.values)-1].Gen(r, seq)
}

func compileGen(name string, arg any) (Gen, error) {
	params, _ := arg.(map[string]any)
	num := func(key string, def float64, required bool) (float64, error) {
		v, ok := params[key]
		if !ok {
			if required {
				return 0, fmt.Errorf("%s needs %s", name, key)
			}
			return def, nil
		}
		f, ok := toFloat(v)
		if !ok || math.IsNaN(f) || math.IsInf(f, 0) {
			return 0, fmt.Errorf("%s.%s: %v is not a finite number", name, key, v)
		}
		return f, nil
	}
	bounds := func() (float64, float64, error) {
		lo, err := num("min", math.Inf(-1), false)
		if err != nil {
			return 0, 0, err
		}
		hi, err := num("max", math.Inf(1), false)
		if err != nil {
			return 0, 0, err
		}
		if lo > hi {
			return 0, 0, fmt.Errorf("%s: min %v > max %v", name, lo, hi)
		}
		return lo, hi, nil
	}
	needParams := func() error {
		if params == nil {
			return fmt.Errorf("%s takes a map of parameters", name)
		}
		return nil
	}
	switch name {
	case "$uniform", "$int":
		if err := needParams(); err != nil {
			return nil, err
		}
		lo, err := num("min", 0, true)
		if err != nil {
			return nil, err
		}
		hi, err := num("max", 0, true)
		if err != nil {
			return nil, err
		}
		if lo > hi {
			return nil, fmt.Errorf("%s: min %v > max %v", name, lo, hi)
		}
		if name == "$int" {
			a, b := int64(math.Ceil(lo)), int64(math.Floor(hi))
			return dist{draw: func(r *rand.Rand) float64 { return float64(a + r.Int64N(b-a+1)) }, lo: lo, hi: hi, asInt: true}, nil
		}
		return dist{draw: func(r *rand.Rand) float64 { return lo + r.Float64()*(hi-lo) }, lo: lo, hi: hi}, nil
	case "$normal":
		if err := needParams(); err != nil {
			return nil, err
		}
		mean, err := num("mean", 0, true)
		if err != nil {
			return nil, err
		}
		sd, err := num("stddev", 0, true)
		if err != nil {
			return nil, err
		}
		lo, hi, err := bounds()
		if err != nil {
			return nil, err
		}
		return dist{draw: func(r *rand.Rand) float64 { return mean + sd*r.NormFloat64() }, lo: lo, hi: hi}, nil
	case "$lognormal":
		if err := needParams(); err != nil {
			return nil, err
		}
		median, err := num("median", 0, true)
		if err != nil {
			return nil, err
		}
		if median <= 0 {
			return nil, errors.New("$lognormal: median must be > 0")
		}
		sigma, err := num("sigma", 0.5, false)
		if err != nil {
			return nil, err
		}
		lo, hi, err := bounds()
		if err != nil {
			return nil, err
		}
		mu := math.Log(median)
		return dist{draw: func(r *rand.Rand) float64 { return math.Exp(mu + sigma*r.NormFloat64()) }, lo: lo, hi: hi}, nil
	case "$exponential":
		if err := needParams(); err != nil {
			return nil, err
		}
		mean, err := num("mean", 0, true)
		if err != nil {
			return nil, err
		}
		lo, hi, err := bounds()
		if err != nil {
			return nil, err
		}
		return dist{draw: func(r *rand.Rand) float64 { return mean * r.ExpFloat64() }, lo: lo, hi: hi}, nil
	case "$choice":
		var values []any
		var weights []float64
		switch x := arg.(type) {
		case []any:
			values = x
		case map[string]any:
			vs, ok := x["values"].([]any)
			if !ok {
				return nil, errors.New("$choice: values must be a list")
			}
			values = vs
			if ws, ok := x["weights"].([]any); ok {
				for _, w := range ws {
					f, ok := toFloat(w)
					if !ok || f < 0 {
						return nil, errors.New("$choice: weights must be numbers >= 0")
					}
					weights = append(weights, f)
				}
				if len(weights) != len(values) {
					return nil, errors.New("$choice: as many weights as values")
				}
			}
		default:
			return nil, errors.New("$choice takes a list, or {values, weights}")
		}
		if len(values) == 0 {
			return nil, errors.New("$choice: no values")
		}
		c := choiceGen{}
		for i, v := range values {
			g, err := Compile(v)
			if err != nil {
				return nil, fmt.Errorf("$choice[%d]: %w", i, err)
			}
			c.values = append(c.values, g)
			w := 1.0
			if weights != nil {
				w = weights[i]
			}
			c.weights = append(c.weights, w)
			c.total += w
		}
		if c.total <= 0 {
			return nil, errors.New("$choice: weights add up to 0")
		}
		return c, nil
	case "$seq":
		s, ok := arg.(string)
		if !ok {
			return nil, errors.New(`$seq takes a string such as "run-{n}"`)
		}
		return seqGen(s), nil
	case "$uuid":
		return uuidGen{}, nil
	}
	return nil, fmt.Errorf("unknown generator %s (want $uniform, $int, $normal, $lognormal, $exponential, $choice, $seq or $uuid)", name)
}
