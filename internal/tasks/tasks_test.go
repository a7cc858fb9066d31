package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

func run(t *testing.T, ctx context.Context, name string, args []any, kwargs map[string]any) (any, error) {
	t.Helper()
	reg := NewRegistry()
	RegisterDiag(reg)
	h, ok := reg.Lookup(name)
	if !ok {
		t.Fatalf("%s not registered", name)
	}
	return h.ServeTask(ctx, &Request{ID: "t1", Name: name, Args: args, Kwargs: kwargs})
}

func TestDiagTasks(t *testing.T) {
	n := func(s string) json.Number { return json.Number(s) }
	cases := []struct {
		name    string
		task    string
		args    []any
		kwargs  map[string]any
		want    any
		errType string
	}{
		{"add ints stay ints", DiagAdd, []any{n("2"), n("3")}, nil, n("5"), ""},
		{"add big ints exact", DiagAdd, []any{n("9223372036854775807"), n("1")}, nil, n("9223372036854775808"), ""},
		{"add floats stay floats", DiagAdd, []any{n("1.5"), n("2")}, nil, 3.5, ""},
		{"add whole floats stay floats", DiagAdd, []any{n("1.0"), n("2.0")}, nil, 3.0, ""},
		{"add kwargs", DiagAdd, nil, map[string]any{"x": n("40"), "y": n("2")}, n("42"), ""},
		{"add missing arg", DiagAdd, []any{n("1")}, nil, nil, "TypeError"},
		{"add wrong type", DiagAdd, []any{"a", n("1")}, nil, nil, "TypeError"},
		{"echo nested unicode", DiagEcho, []any{map[string]any{"k": []any{"ünï", "😀", nil}}}, nil,
			map[string]any{"k": []any{"ünï", "😀", nil}}, ""},
		{"echo kwarg", DiagEcho, nil, map[string]any{"value": true}, true, ""},
		{"sleep returns seconds", DiagSleep, []any{n("0.01")}, nil, n("0.01"), ""},
		{"sleep negative", DiagSleep, []any{n("-1")}, nil, nil, "ValueError"},
		{"cpu returns ms", DiagCPU, []any{n("5")}, nil, n("5"), ""},
		{"fail raises RuntimeError", DiagFail, []any{"boom"}, nil, nil, "RuntimeError"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := run(t, context.Background(), tc.task, tc.args, tc.kwargs)
			if tc.errType != "" {
				if err == nil {
					t.Fatalf("want %s, got result %v", tc.errType, got)
				}
				if e := AsError(err); e.Type != tc.errType || e.Module != "builtins" {
					t.Fatalf("want builtins.%s, got %s.%s (%v)", tc.errType, e.Module, e.Type, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %#v, want %#v", got, tc.want)
			}
		})
	}
}

func TestDiagSleepCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(20 * time.Millisecond); cancel() }()
	_, err := run(t, ctx, DiagSleep, []any{json.Number("60")}, nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("want context.Canceled, got %v", err)
	}
}

func TestRegistryMiddlewareOrderAndNames(t *testing.T) {
	reg := NewRegistry()
	var order []string
	mw := func(tag string) Middleware {
		return func(next Handler) Handler {
			return HandlerFunc(func(ctx context.Context, r *Request) (any, error) {
				order = append(order, tag)
				return next.ServeTask(ctx, r)
			})
		}
	}
	reg.Use(mw("outer"), mw("inner"))
	reg.HandleFunc("b.task", func(context.Context, *Request) (any, error) { order = append(order, "h"); return nil, nil })
	reg.HandleFunc("a.task", func(context.Context, *Request) (any, error) { return nil, nil })
	h, _ := reg.Lookup("b.task")
	if _, err := h.ServeTask(context.Background(), &Request{}); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(order, ","); got != "outer,inner,h" {
		t.Fatalf("middleware order %s", got)
	}
	if got := reg.Names(); !reflect.DeepEqual(got, []string{"a.task", "b.task"}) {
		t.Fatalf("names %v", got)
	}
	if _, ok := reg.Lookup("nope"); ok {
		t.Fatal("unknown task found")
	}
}

func TestParseConfig(t *testing.T) {
	cases := []struct {
		name    string
		yaml    string
		wantErr string
		check   func(t *testing.T, c *Config)
	}{
		{"empty", "", "", func(t *testing.T, c *Config) {
			if !c.For("x").AcksLate {
				t.Fatal("default must be acks_late")
			}
		}},
		{"settings", "tasks:\n  diag.sleep:\n    acks_late: false\n    track_started: true\n    queue: slow\n  diag.add:\n    ignore_result: true\n", "",
			func(t *testing.T, c *Config) {
				s := c.For("diag.sleep")
				if s.AcksLate || !s.TrackStarted || s.Queue != "slow" {
					t.Fatalf("diag.sleep: %+v", s)
				}
				if a := c.For("diag.add"); !a.AcksLate || !a.IgnoreResult {
					t.Fatalf("diag.add: %+v", a)
				}
				if q := c.Queues(); !reflect.DeepEqual(q, []string{"slow"}) {
					t.Fatalf("queues %v", q)
				}
			}},
		{"unknown setting", "tasks:\n  diag.add:\n    acks_lat: true\n", "cfg.yaml:3: tasks.diag.add.acks_lat: unknown setting", nil},
		{"wrong type", "tasks:\n  diag.add:\n    acks_late: maybe\n", "cfg.yaml:3: tasks.diag.add.acks_late: bad value", nil},
		{"unknown top key", "task:\n  x: {}\n", "cfg.yaml:1: task: unknown key", nil},
		{"queue not string", "tasks:\n  x:\n    queue: [a]\n", "cfg.yaml:3: tasks.x.queue", nil},
		{"broken yaml", "tasks: [\n", "cfg.yaml", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig("cfg.yaml", []byte(tc.yaml))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("want error containing %q, got %v", tc.wantErr, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}
