// Package tasks is the handler API of the fleet: what a task implementation sees (Request),
// what it returns (a JSON value or an error), the registry keyed by Celery task name with
// middleware, the per-task configuration file, and the built-in diagnostic tasks.
//
// The shape follows net/http: a Handler serves one task request; HandlerFunc adapts a
// function; Registry.Use wraps every handler with middleware (logging, metrics, tracing).
package tasks

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"
)

// DeliveryInfo says where a request came from.
type DeliveryInfo struct {
	Queue       string
	Exchange    string
	RoutingKey  string
	Priority    int
	Redelivered bool
}

// Request is one task run as a handler sees it. Args and Kwargs hold JSON values as decoded
// from the message: nil, bool, string, json.Number (every number), []any and map[string]any.
// Use the typed accessors (Int, Float, String, Value) rather than type switches.
type Request struct {
	ID       string
	Name     string
	Args     []any
	Kwargs   map[string]any
	Retries  int
	ETA      *time.Time
	Expires  *time.Time
	RootID   string
	ParentID string
	GroupID  string
	// Headers are the message's headers as received. They are shared with the message
	// the worker keeps for dead-lettering: read them, never modify them.
	Headers  map[string]any
	Delivery DeliveryInfo
	// Hostname is the node name of the worker running the request.
	Hostname string
}

// Handler runs one task. It returns a JSON-serialisable result or an error. Errors become a
// FAILURE result; an *Error chooses the Python exception type Python's get() raises.
type Handler interface {
	ServeTask(ctx context.Context, r *Request) (any, error)
}

// HandlerFunc adapts an ordinary function to Handler.
type HandlerFunc func(ctx context.Context, r *Request) (any, error)

// ServeTask calls f(ctx, r).
func (f HandlerFunc) ServeTask(ctx context.Context, r *Request) (any, error) { return f(ctx, r) }

// Middleware wraps a handler, e.g. to log, measure or trace every task.
type Middleware func(Handler) Handler

// Registry maps Celery task names to handlers. It is safe for concurrent use; registering
// after the worker started is allowed.
type Registry struct {
	mu         sync.RWMutex
	handlers   map[string]Handler
	middleware []Middleware
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{handlers: make(map[string]Handler)}
}

// Register adds h under the Celery task name. Registering a name twice is a programming
// error and panics, as net/http.ServeMux does.
func (r *Registry) Register(name string, h Handler) {
	if name == "" || h == nil {
		panic("tasks: Register needs a name and a handler")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.handlers[name]; dup {
		panic(fmt.Sprintf("tasks: task %q registered twice", name))
	}
	r.handlers[name] = h
}

// HandleFunc registers a function under the Celery task name.
func (r *Registry) HandleFunc(name string, f func(ctx context.Context, r *Request) (any, error)) {
	r.Register(name, HandlerFunc(f))
}

// Use appends middleware; the first added is the outermost.
func (r *Registry) Use(mw ...Middleware) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.middleware = append(r.middleware, mw...)
}

// Lookup returns the handler for name wrapped in the registry's middleware.
func (r *Registry) Lookup(name string) (Handler, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	h, ok := r.handlers[name]
	if !ok {
		return nil, false
	}
	for i := len(r.middleware) - 1; i >= 0; i-- {
		h = r.middleware[i](h)
	}
	return h, true
}

// Names lists the registered task names, sorted (Celery's `inspect registered`).
func (r *Registry) Names() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	names := make([]string, 0, len(r.handlers))
	for n := range r.handlers {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
