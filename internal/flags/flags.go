// Package flags holds the fleet's feature flags: the seed's DENIS_* / *_ENABLED switches that
// drive the staged rollout, read live by every worker.
//
// A flag's effective value comes from layered sources, a later one overriding an earlier:
// the built-in default, the environment, a file (a ConfigMap mounted as a directory of one
// file per key, or a YAML file of KEY: value), and the Redis hash fleet:flags. The file is
// re-read every second; the Redis hash is re-read whenever a message arrives on the channel
// fleet:flags:changed (which Store.Set and Store.Unset publish) and periodically as a safety
// net, so a change made in Redis is applied by every worker within a second.
//
// Every value is validated: a bad value is rejected with a log line and the source's last
// good value stays. Each change of an effective value is logged with its source.
//
// Denis's Python code reads and writes the same flags as plain strings:
//
//	r.hset("fleet:flags", "DENIS_MATERIALIZERS_ENABLED", "false")
//	r.publish("fleet:flags:changed", "DENIS_MATERIALIZERS_ENABLED")
package flags

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Source is where an effective value came from.
type Source string

// Sources, from lowest to highest precedence.
const (
	SourceDefault Source = "default"
	SourceEnv     Source = "env"
	SourceFile    Source = "file"
	SourceRedis   Source = "redis"
)

// sourceOrder lists the sources in precedence order, lowest first.
func sourceOrder() [4]Source { return [4]Source{SourceDefault, SourceEnv, SourceFile, SourceRedis} }

// Defaults for Options and Store.
const (
	DefaultRedisKey     = "fleet:flags"
	DefaultRedisChannel = "fleet:flags:changed"
	DefaultFilePoll     = time.Second
	DefaultRedisResync  = 10 * time.Second
)

// State is the effective value of one flag and where it came from.
type State struct {
	Name   string `json:"name"`
	Value  string `json:"value"` // canonical: "true"/"false" or a decimal integer
	Source Source `json:"source"`
	Kind   Kind   `json:"-"`
}

// Bool reports whether the value is "true".
func (s State) Bool() bool { return s.Value == "true" }

// Int returns the value of a Percent flag (0 for a Bool flag).
func (s State) Int() int {
	n, _ := strconv.Atoi(s.Value)
	return n
}

// Number is the value as a metric sample: 1 or 0 for a Bool flag, the number otherwise.
func (s State) Number() float64 {
	if s.Kind == Bool {
		if s.Bool() {
			return 1
		}
		return 0
	}
	return float64(s.Int())
}

// Change is one change of a flag's effective value or source.
type Change struct {
	Old, New State
}

// ValueChanged reports whether the value changed (not just its source).
func (c Change) ValueChanged() bool { return c.Old.Value != c.New.Value }

// SourceStatus is the health of one source, for metrics and `fleetctl flags --workers`.
type SourceStatus struct {
	Source     Source    `json:"source"`
	LastLoad   time.Time `json:"last_load,omitzero"`   // last successful read
	LastError  string    `json:"last_error,omitempty"` // error of the last read, "" when it succeeded
	Rejections uint64    `json:"rejections"`           // bad values rejected so far
}

// Snapshot is everything a metrics collector or heartbeat needs, taken at one instant.
type Snapshot struct {
	Flags   []State        `json:"flags"`   // sorted by name
	Sources []SourceStatus `json:"sources"` // configured sources in precedence order
	Changes uint64         `json:"changes"` // effective changes applied since New
}

// Options configure a Flags.
type Options struct {
	// Logger receives change and rejection lines; nil means slog.Default().
	Logger *slog.Logger
	// LookupEnv reads the environment; nil means os.LookupEnv.
	LookupEnv func(string) (string, bool)
	// File is a directory of one file per flag (a mounted ConfigMap) or a YAML file of
	// KEY: value (optionally under a top-level "flags:" key). Empty: no file source.
	File string
	// FilePoll is how often the file is re-read (default 1 s).
	FilePoll time.Duration
	// Redis is the client of the Redis source; nil: no Redis source.
	Redis redis.UniversalClient
	// RedisKey and RedisChannel default to fleet:flags and fleet:flags:changed.
	RedisKey, RedisChannel string
	// RedisResync is how often the hash is re-read without a notification (default 10 s).
	RedisResync time.Duration
}

// Flags is the live set of flags of one worker. It is safe for concurrent use.
type Flags struct {
	opts Options
	log  *slog.Logger
	defs map[string]Def

	applyMu sync.Mutex // serialises apply, so changes reach subscribers in order

	mu        sync.RWMutex
	layers    map[Source]map[string]string // canonical values per source
	rejected  map[Source]map[string]string // bad raw value per source and name, logged once
	unknown   map[Source]map[string]bool   // unknown names per source, logged once
	status    map[Source]*SourceStatus
	effective map[string]State
	changes   uint64
	subs      map[int]func(Change)
	nextSub   int

	runMu   sync.Mutex
	started bool
	stop    context.CancelFunc
	wg      sync.WaitGroup
	closers []func() error
}

// New returns flags holding the built-in defaults overridden by the environment. Start
// brings in the file and Redis sources and keeps them live.
func New(opts Options) (*Flags, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.LookupEnv == nil {
		opts.LookupEnv = os.LookupEnv
	}
	if opts.FilePoll < 0 || opts.RedisResync < 0 {
		return nil, errors.New("flags: FilePoll and RedisResync must not be negative")
	}
	if opts.FilePoll == 0 {
		opts.FilePoll = DefaultFilePoll
	}
	if opts.RedisResync == 0 {
		opts.RedisResync = DefaultRedisResync
	}
	if opts.RedisKey == "" {
		opts.RedisKey = DefaultRedisKey
	}
	if opts.RedisChannel == "" {
		opts.RedisChannel = DefaultRedisChannel
	}
	f := &Flags{
		opts:      opts,
		log:       opts.Logger.With("component", "flags"),
		defs:      map[string]Def{},
		layers:    map[Source]map[string]string{},
		rejected:  map[Source]map[string]string{},
		unknown:   map[Source]map[string]bool{},
		status:    map[Source]*SourceStatus{},
		effective: map[string]State{},
		subs:      map[int]func(Change){},
	}
	defaults := map[string]string{}
	for _, d := range Defs() {
		f.defs[d.Name] = d
		defaults[d.Name] = d.Default
		f.effective[d.Name] = State{Name: d.Name, Value: d.Default, Source: SourceDefault, Kind: d.Kind}
	}
	for _, s := range sourceOrder() {
		f.layers[s] = map[string]string{}
		f.rejected[s] = map[string]string{}
		f.unknown[s] = map[string]bool{}
		f.status[s] = &SourceStatus{Source: s}
	}
	f.layers[SourceDefault] = defaults
	f.status[SourceDefault].LastLoad = time.Now()
	f.status[SourceEnv].LastLoad = time.Now()

	env := map[string]string{}
	for name := range f.defs {
		if v, ok := opts.LookupEnv(name); ok {
			env[name] = v
		}
	}
	f.apply(SourceEnv, env)
	return f, nil
}

// Start reads the file and Redis sources once and then keeps them live until ctx is done or
// Close is called. A source that cannot be read now is logged and retried; it does not stop
// Start.
func (f *Flags) Start(ctx context.Context) error {
	f.runMu.Lock()
	defer f.runMu.Unlock()
	if f.started {
		return errors.New("flags: Start called twice")
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("flags: start: %w", err)
	}
	f.started = true
	ctx, f.stop = context.WithCancel(ctx)
	if f.opts.File != "" {
		w := &fileWatcher{f: f, path: f.opts.File}
		w.poll()
		f.wg.Go(func() { w.run(ctx) })
	}
	if f.opts.Redis != nil {
		w := newRedisWatcher(f)
		w.start(ctx)
		f.closers = append(f.closers, w.close)
	}
	return nil
}

// Close stops watching the sources and waits for the watchers to end. The last values stay.
func (f *Flags) Close() error {
	f.runMu.Lock()
	defer f.runMu.Unlock()
	if f.stop != nil {
		f.stop()
	}
	var errs []error
	for _, c := range f.closers {
		errs = append(errs, c())
	}
	f.closers = nil
	f.wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("flags: close: %w", err)
	}
	return nil
}

// Reload reads the file and Redis sources now, returning their errors. Start does this on
// its own; Reload is for a caller that wants the newest values at once.
func (f *Flags) Reload(ctx context.Context) error {
	var errs []error
	if f.opts.File != "" {
		vals, err := readFileSource(f.opts.File)
		if err != nil {
			f.sourceError(SourceFile, err)
			errs = append(errs, err)
		} else {
			f.sourceLoaded(SourceFile)
			f.apply(SourceFile, vals)
		}
	}
	if f.opts.Redis != nil {
		if err := f.loadRedis(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Get returns the effective state of the named flag.
func (f *Flags) Get(name string) (State, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	s, ok := f.effective[name]
	return s, ok
}

// Bool returns the effective value of a Bool flag; false for an unknown name.
func (f *Flags) Bool(name string) bool {
	s, _ := f.Get(name)
	return s.Bool()
}

// Int returns the effective value of a Percent flag; 0 for an unknown name.
func (f *Flags) Int(name string) int {
	s, _ := f.Get(name)
	return s.Int()
}

// Effective returns the effective value and source of every flag, sorted by name.
func (f *Flags) Effective() []State {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.effectiveLocked()
}

func (f *Flags) effectiveLocked() []State {
	out := make([]State, 0, len(f.effective))
	for _, name := range slices.Sorted(maps.Keys(f.effective)) {
		out = append(out, f.effective[name])
	}
	return out
}

// Snapshot returns the flags and the health of their sources.
func (f *Flags) Snapshot() Snapshot {
	f.mu.RLock()
	defer f.mu.RUnlock()
	snap := Snapshot{Flags: f.effectiveLocked(), Changes: f.changes}
	for _, s := range sourceOrder() {
		if (s == SourceFile && f.opts.File == "") || (s == SourceRedis && f.opts.Redis == nil) {
			continue
		}
		snap.Sources = append(snap.Sources, *f.status[s])
	}
	return snap
}

// Subscribe calls fn after every change of a flag's effective value or source, in order, on
// the goroutine that applied it; fn must not block for long. The returned function ends the
// subscription.
func (f *Flags) Subscribe(fn func(Change)) (cancel func()) {
	f.mu.Lock()
	id := f.nextSub
	f.nextSub++
	f.subs[id] = fn
	f.mu.Unlock()
	return func() {
		f.mu.Lock()
		delete(f.subs, id)
		f.mu.Unlock()
	}
}

// apply replaces the layer of src with the valid values of raw (keeping the last good value
// of a name whose new value is bad), recomputes the effective values and reports changes.
func (f *Flags) apply(src Source, raw map[string]string) {
	f.applyMu.Lock()
	defer f.applyMu.Unlock()

	f.mu.Lock()
	old := f.layers[src]
	layer := make(map[string]string, len(raw))
	rejected := f.rejected[src]
	for _, name := range slices.Sorted(maps.Keys(raw)) {
		v := raw[name]
		def, ok := f.defs[name]
		if !ok {
			if !f.unknown[src][name] {
				f.unknown[src][name] = true
				f.log.Warn("unknown flag ignored", "flag", name, "source", src)
			}
			continue
		}
		canon, err := def.Parse(v)
		if err != nil {
			if prev, seen := rejected[name]; !seen || prev != v {
				rejected[name] = v
				f.status[src].Rejections++
				keep, had := old[name]
				if !had {
					keep = f.effective[name].Value
				}
				f.log.Warn("flag value rejected; last good value stays", "flag", name, "source", src,
					"value", quote(v), "keeping", keep, "error", err.Error())
			}
			if prev, had := old[name]; had {
				layer[name] = prev
			}
			continue
		}
		delete(rejected, name)
		layer[name] = canon
	}
	for name := range rejected {
		if _, still := raw[name]; !still {
			delete(rejected, name)
		}
	}
	f.layers[src] = layer

	var changes []Change
	for name, def := range f.defs {
		next := State{Name: name, Kind: def.Kind}
		order := sourceOrder()
		for i := len(order) - 1; i >= 0; i-- {
			if v, ok := f.layers[order[i]][name]; ok {
				next.Value, next.Source = v, order[i]
				break
			}
		}
		if prev := f.effective[name]; prev != next {
			f.effective[name] = next
			changes = append(changes, Change{Old: prev, New: next})
		}
	}
	f.changes += uint64(len(changes))
	subs := make([]func(Change), 0, len(f.subs))
	for _, id := range slices.Sorted(maps.Keys(f.subs)) {
		subs = append(subs, f.subs[id])
	}
	f.mu.Unlock()

	slices.SortFunc(changes, func(a, b Change) int { return strings.Compare(a.New.Name, b.New.Name) })
	for _, c := range changes {
		f.log.Info("flag changed", "flag", c.New.Name, "value", c.New.Value, "source", c.New.Source,
			"previous", c.Old.Value, "previous_source", c.Old.Source)
		for _, fn := range subs {
			fn(c)
		}
	}
}

// sourceLoaded records a successful read of src, logging a recovery.
func (f *Flags) sourceLoaded(src Source) {
	f.mu.Lock()
	st := f.status[src]
	recovered := st.LastError != ""
	st.LastError, st.LastLoad = "", time.Now()
	f.mu.Unlock()
	if recovered {
		f.log.Info("flag source readable again", "source", src)
	}
}

// sourceError records a failed read of src, logging it once per distinct error.
func (f *Flags) sourceError(src Source, err error) {
	f.mu.Lock()
	st := f.status[src]
	same := st.LastError == err.Error()
	st.LastError = err.Error()
	f.mu.Unlock()
	if !same {
		f.log.Warn("flag source unreadable; last good values stay", "source", src, "error", err.Error())
	}
}
