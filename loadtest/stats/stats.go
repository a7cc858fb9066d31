// Package stats holds the load test's arithmetic: percentiles (linear interpolation
// between closest ranks, numpy's default), latency summaries and time series.
package stats

import (
	"math"
	"slices"
	"time"
)

// Percentile returns the p-th percentile (0 <= p <= 100) of sorted, interpolating
// linearly between the two closest ranks: rank h = (n-1)·p/100, value
// sorted[⌊h⌋] + (h-⌊h⌋)·(sorted[⌊h⌋+1]-sorted[⌊h⌋]). NaN for an empty slice. sorted
// must be in ascending order.
func Percentile(sorted []float64, p float64) float64 {
	n := len(sorted)
	if n == 0 || math.IsNaN(p) {
		return math.NaN()
	}
	p = min(max(p, 0), 100)
	h := float64(n-1) * p / 100
	lo := int(math.Floor(h))
	if lo >= n-1 {
		return sorted[n-1]
	}
	return sorted[lo] + (h-float64(lo))*(sorted[lo+1]-sorted[lo])
}

// Summary is the distribution of a sample: count, mean, percentiles and max.
type Summary struct {
	Count int     `json:"count"`
	Mean  float64 `json:"mean"`
	P50   float64 `json:"p50"`
	P95   float64 `json:"p95"`
	P99   float64 `json:"p99"`
	Max   float64 `json:"max"`
}

// Summarize sorts a copy of xs and returns its summary (zero for an empty sample).
func Summarize(xs []float64) Summary {
	if len(xs) == 0 {
		return Summary{}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	var sum float64
	for _, x := range s {
		sum += x
	}
	return Summary{Count: len(s), Mean: sum / float64(len(s)),
		P50: Percentile(s, 50), P95: Percentile(s, 95), P99: Percentile(s, 99), Max: s[len(s)-1]}
}

// Point is one sample of a time series: T seconds since the start of the run.
type Point struct {
	T float64 `json:"t"`
	V float64 `json:"v"`
}

// Series is a named time series.
type Series struct {
	Name   string  `json:"name"`
	Points []Point `json:"points"`
}

// Add appends a sample.
func (s *Series) Add(t time.Duration, v float64) {
	s.Points = append(s.Points, Point{T: t.Seconds(), V: v})
}

// Max is the largest value at or after from (seconds); 0 when there is none.
func (s *Series) Max(from float64) float64 {
	m := 0.0
	for _, p := range s.Points {
		if p.T >= from {
			m = max(m, p.V)
		}
	}
	return m
}

// Bucketed collects timestamped values into fixed-width buckets, for rates and rolling
// percentiles over time.
type Bucketed struct {
	Width   time.Duration
	buckets [][]float64
}

// Add puts value v in the bucket of offset t (t < 0 goes to the first bucket).
func (b *Bucketed) Add(t time.Duration, v float64) {
	i := 0
	if t > 0 {
		i = int(t / b.Width)
	}
	for len(b.buckets) <= i {
		b.buckets = append(b.buckets, nil)
	}
	b.buckets[i] = append(b.buckets[i], v)
}

// Len is the number of buckets.
func (b *Bucketed) Len() int { return len(b.buckets) }

// Rate returns, per bucket, the count divided by the bucket width (events/s) at the
// bucket's middle.
func (b *Bucketed) Rate(name string) Series {
	s := Series{Name: name}
	w := b.Width.Seconds()
	for i, xs := range b.buckets {
		s.Points = append(s.Points, Point{T: (float64(i) + 0.5) * w, V: float64(len(xs)) / w})
	}
	return s
}

// Percentile returns, per non-empty bucket, the p-th percentile of its values.
func (b *Bucketed) Percentile(name string, p float64) Series {
	s := Series{Name: name}
	w := b.Width.Seconds()
	for i, xs := range b.buckets {
		if len(xs) == 0 {
			continue
		}
		c := slices.Clone(xs)
		slices.Sort(c)
		s.Points = append(s.Points, Point{T: (float64(i) + 0.5) * w, V: Percentile(c, p)})
	}
	return s
}
