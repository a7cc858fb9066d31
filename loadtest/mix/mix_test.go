package mix

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

func TestDefaultMix(t *testing.T) {
	m, err := Load("", "lt")
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	counts := map[string]int{}
	kinds := map[string]int{}
	injected := 0
	const n = 20000
	for range n {
		msg := m.Draw(r)
		counts[msg.Class.Name]++
		kinds[msg.Class.Kind]++
		if msg.Queue != "lt" {
			t.Fatalf("queue %q, want the default lt", msg.Queue)
		}
		if msg.Injected != InjectedNone {
			injected++
			continue
		}
		if !msg.NominalKnown || msg.Nominal <= 0 {
			t.Fatalf("%s: nominal %v known %v", msg.Task, msg.Nominal, msg.NominalKnown)
		}
		if msg.Class.Name == "crew-run" && (msg.Nominal > 30 || msg.Task != TaskSleep) {
			t.Fatalf("crew run %v", msg)
		}
	}
	if f := float64(kinds[KindMaterializer]) / n; math.Abs(f-0.8) > 0.02 {
		t.Errorf("materializer share %.3f, want 0.8", f)
	}
	if f := float64(injected) / n; f < 0.005 || f > 0.025 {
		t.Errorf("injected share %.4f, want about 0.014", f)
	}
}

func TestGenerators(t *testing.T) {
	tests := []struct {
		name  string
		yaml  string
		check func(t *testing.T, v any)
	}{
		{"const", `tasks: [{task: t, weight: 1, args: [3, "x", 1.5, true, null]}]`, func(t *testing.T, v any) {
			a := v.([]any)
			if a[0] != int64(3) || a[1] != "x" || a[2] != 1.5 || a[3] != true || a[4] != nil {
				t.Fatalf("%#v", a)
			}
		}},
		{"uniform", `tasks: [{task: t, weight: 1, args: [{$uniform: {min: 2, max: 3}}]}]`, func(t *testing.T, v any) {
			if f := v.([]any)[0].(float64); f < 2 || f > 3 {
				t.Fatal(f)
			}
		}},
		{"int", `tasks: [{task: t, weight: 1, args: [{$int: {min: 1, max: 2}}]}]`, func(t *testing.T, v any) {
			if i := v.([]any)[0].(int64); i < 1 || i > 2 {
				t.Fatal(i)
			}
		}},
		{"lognormal capped", `tasks: [{task: t, weight: 1, args: [{$lognormal: {median: 100, sigma: 3, max: 101}}]}]`, func(t *testing.T, v any) {
			if f := v.([]any)[0].(float64); f <= 0 || f > 101 {
				t.Fatal(f)
			}
		}},
		{"choice", `tasks: [{task: t, weight: 1, args: [{$choice: {values: [a, b], weights: [1, 0]}}]}]`, func(t *testing.T, v any) {
			if s := v.([]any)[0]; s != "a" {
				t.Fatal(s)
			}
		}},
		{"nested kwargs", `tasks: [{task: t, weight: 1, args: [{materializer: {$choice: [daily]}, params: {n: {$seq: "r-{n}"}, id: {$uuid: true}}}]}]`, func(t *testing.T, v any) {
			m := v.([]any)[0].(map[string]any)
			p := m["params"].(map[string]any)
			if m["materializer"] != "daily" || !strings.HasPrefix(p["n"].(string), "r-") || len(p["id"].(string)) != 36 {
				t.Fatalf("%#v", m)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := Parse([]byte(tt.yaml), "q")
			if err != nil {
				t.Fatal(err)
			}
			r := rand.New(rand.NewPCG(3, 4))
			for range 200 {
				tt.check(t, m.Draw(r).Args)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	for _, y := range []string{
		`tasks: []`,
		`tasks: [{weight: 1}]`,
		`tasks: [{task: t, weight: 0}]`,
		`tasks: [{task: t, weight: 1, kind: bogus}]`,
		`tasks: [{task: t, weight: 1, priority: 11}]`,
		`tasks: [{task: t, weight: 1, fail_rate: 0.7, retry_rate: 0.7}]`,
		`tasks: [{task: t, weight: 1, args: [{$zipf: {}}]}]`,
		`tasks: [{task: t, weight: 1, args: [{$uniform: {min: 3, max: 1}}]}]`,
		`tasks: [{task: t, weight: 1, args: [{$lognormal: {sigma: 1}}]}]`,
		`tasks: [{task: t, weight: 1, colour: red}]`,
		`tasks: [{task: t, name: a, weight: 1}, {task: u, name: a, weight: 1}]`,
	} {
		if _, err := Parse([]byte(y), "q"); err == nil {
			t.Errorf("%s: no error", y)
		}
	}
}

func TestInjectedAndNominal(t *testing.T) {
	m, err := Parse([]byte(`tasks: [{task: diag.cpu, weight: 1, args: [250], fail_rate: 0.5, retry_rate: 0.5, retries: 2}]`), "q")
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(5, 6))
	seen := map[string]int{}
	for range 1000 {
		msg := m.Draw(r)
		seen[msg.Injected]++
		switch msg.Injected {
		case InjectedFailure:
			if msg.Task != TaskFail {
				t.Fatal(msg.Task)
			}
		case InjectedRetry:
			if msg.Task != TaskFlaky || msg.Args[0] != int64(2) {
				t.Fatal(msg)
			}
		default:
			t.Fatalf("not injected with fail+retry = 1: %+v", msg)
		}
	}
	if seen[InjectedFailure] < 400 || seen[InjectedRetry] < 400 {
		t.Fatal(seen)
	}
	m2, _ := Parse([]byte(`tasks: [{task: diag.cpu, weight: 1, kwargs: {ms: 250}}, {task: x.y, weight: 1}]`), "q")
	for range 50 {
		msg := m2.Draw(r)
		if msg.Task == TaskCPU && (!msg.NominalKnown || msg.Nominal != 0.25) {
			t.Fatalf("diag.cpu(ms=250) nominal %v", msg.Nominal)
		}
		if msg.Task == "x.y" && msg.NominalKnown {
			t.Fatal("unknown task has a nominal time")
		}
	}
}
