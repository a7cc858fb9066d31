package fleetctl

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	goredis "github.com/redis/go-redis/v9"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/broker/amqp"
	"denis.io/fleet/internal/connect"
	"denis.io/fleet/internal/dlq"
	"denis.io/fleet/internal/protocol"
)

// The tests run fleetctl in-process against the real RabbitMQ (in a virtual host of their
// own) and Redis (DB 8), on queues of their own.
const redisURL = "redis://127.0.0.1:6379/8"

// syncBuffer is a bytes.Buffer safe for a command running in another goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type runResult struct {
	code        int
	out, stderr string
}

// runCmd runs fleetctl with args; stdin feeds confirmations (on a "terminal" when tty).
func runCmd(ctx context.Context, t *testing.T, stdin string, tty bool, args ...string) runResult {
	t.Helper()
	var out, errb syncBuffer
	code := Main(ctx, args, IO{In: strings.NewReader(stdin), Out: &out, Err: &errb, InTerminal: tty, Env: []string{"PATH=" + os.Getenv("PATH")}})
	return runResult{code, out.String(), errb.String()}
}

func mustRun(t *testing.T, args ...string) runResult {
	t.Helper()
	r := runCmd(context.Background(), t, "", false, args...)
	if r.code != 0 {
		t.Fatalf("fleetctl %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.out, r.stderr)
	}
	return r
}

func jsonOut[T any](t *testing.T, r runResult) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(r.out), &v); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, r.out)
	}
	return v
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// env is one broker for a test: its URL and a connection to seed and inspect it.
type env struct {
	name, url string
	vhost     string // RabbitMQ
	b         broker.Broker
	br        broker.Browser
}

// testVhost is a RabbitMQ virtual host private to this package's tests (see TestMain), so
// that the commands that go over every queue of a vhost see only the tests' queues.
var testVhost string

func TestMain(m *testing.M) {
	testVhost = "fleetctl-test-" + randHex(4)
	if err := vhost(http.MethodPut, testVhost); err != nil {
		fmt.Fprintln(os.Stderr, "creating a RabbitMQ vhost:", err)
		os.Exit(1)
	}
	dir, err := os.MkdirTemp("", "fleetctl-test-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	testBinDir = dir
	code := kubeHarness.Main(m) // starts a Kubernetes control plane only if a test asks for one
	_ = vhost(http.MethodDelete, testVhost)
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// vhost creates (PUT) or deletes (DELETE) a vhost open to guest, through the management
// API when it answers, else with rabbitmqctl.
func vhost(method, name string) error {
	api := "http://127.0.0.1:15672/api"
	call := func(method, path, body string) error {
		req, err := http.NewRequest(method, api+path, strings.NewReader(body))
		if err != nil {
			return err
		}
		req.SetBasicAuth("guest", "guest")
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			return fmt.Errorf("%s %s: HTTP %d", method, path, resp.StatusCode)
		}
		return nil
	}
	if err := call(http.MethodGet, "/whoami", ""); err == nil {
		if err := call(method, "/vhosts/"+name, ""); err != nil || method == http.MethodDelete {
			return err
		}
		return call(http.MethodPut, "/permissions/"+name+"/guest", `{"configure":".*","write":".*","read":".*"}`)
	}
	cmds := [][]string{{"add_vhost", name}, {"set_permissions", "-p", name, "guest", ".*", ".*", ".*"}}
	if method == http.MethodDelete {
		cmds = [][]string{{"delete_vhost", name}}
	}
	for _, args := range cmds {
		if out, err := exec.Command("rabbitmqctl", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("rabbitmqctl %v: %w: %s", args, err, out)
		}
	}
	return nil
}

func brokers(t *testing.T) []*env {
	t.Helper()
	var out []*env
	for _, u := range []string{"amqp://guest:guest@127.0.0.1:5672/" + testVhost, redisURL} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		b, err := connect.Broker(ctx, u, connect.BrokerOptions{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", u, err)
		}
		e := &env{name: strings.Split(u, ":")[0], url: u, b: b, br: b.(broker.Browser)}
		if e.name == "amqp" {
			e.vhost = strings.TrimPrefix(u, "amqp://guest:guest@127.0.0.1:5672/")
		}
		t.Cleanup(func() { _ = b.Close() })
		out = append(out, e)
	}
	return out
}

// newQueue makes a work queue and its DLQ (declared as Celery and the worker do) and
// deletes them at cleanup.
func (e *env) newQueue(t *testing.T, base string) string {
	t.Helper()
	q := "fctl_" + base + "_" + randHex(4)
	for _, n := range []string{q, dlq.QueueName(q)} {
		if err := e.br.DeclareDLQ(context.Background(), n); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { deleteQueues(e.url, q, dlq.QueueName(q), q+"_other") })
	return q
}

func deleteQueues(url string, names ...string) {
	if strings.HasPrefix(url, "redis") {
		c := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:6379", DB: 8})
		defer c.Close()
		for _, n := range names {
			keys, _ := c.Keys(context.Background(), n+"*").Result()
			keys = append(keys, "_kombu.binding."+n)
			c.Del(context.Background(), keys...)
		}
		return
	}
	conn, err := amqp091.Dial(url)
	if err != nil {
		return
	}
	defer conn.Close()
	for _, n := range names {
		if ch, err := conn.Channel(); err == nil {
			_, _ = ch.QueueDelete(n, false, false, false)
			ch.Close()
		}
	}
}

// seed dead-letters n tasks of queue q (reasons and task names cycling) the way a worker
// does, and returns their task ids.
func (e *env) seed(t *testing.T, q string, n int, reasons []string, tasks []string) []string {
	t.Helper()
	var ids []string
	for i := range n {
		task := protocol.NewTask(tasks[i%len(tasks)], []any{i, "x"}, map[string]any{"n": i})
		m, err := protocol.EncodeTask(task)
		if err != nil {
			t.Fatal(err)
		}
		l := dlq.Letter(&broker.Delivery{Queue: q, Message: m}, reasons[i%len(reasons)], "Boom("+strconv.Itoa(i)+")\nline 2", "w1@host", time.Now())
		if err := e.b.Publish(context.Background(), broker.Publishing{RoutingKey: dlq.QueueName(q), Message: l}); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, task.ID)
	}
	return ids
}

func (e *env) depth(t *testing.T, q string) int {
	t.Helper()
	n, err := e.br.Depth(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	return int(n)
}

// taskIDs lists the task ids in queue q.
func (e *env) taskIDs(t *testing.T, q string) []string {
	t.Helper()
	entries, _, err := dlq.List(context.Background(), e.br, q, dlq.Filter{}, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, en := range entries {
		out = append(out, en.TaskID)
	}
	return out
}

func TestUsageAndErrors(t *testing.T) {
	tests := []struct {
		name  string
		args  []string
		code  int
		inErr string
	}{
		{"no command", nil, ExitUsage, "no command"},
		{"unknown command", []string{"frobnicate"}, ExitUsage, "unknown command"},
		{"unknown dlq command", []string{"dlq", "frob"}, ExitUsage, "unknown command"},
		{"bad output", []string{"-b", redisURL, "--output", "yaml", "dlq", "ls"}, ExitUsage, "--output must be table or json"},
		{"bad broker", []string{"-b", "kafka://x", "dlq", "ls"}, ExitUsage, "scheme must be"},
		{"replay without selection", []string{"-b", redisURL, "dlq", "replay", "q"}, ExitUsage, "or use --all"},
		{"ids and all", []string{"-b", redisURL, "dlq", "purge", "q", "abc", "--all"}, ExitUsage, "exclude each other"},
		{"bad reason", []string{"-b", redisURL, "dlq", "ls", "q", "--reason", "nope"}, ExitUsage, "unknown reason \"nope\""},
		{"bad rate", []string{"-b", redisURL, "dlq", "replay", "q", "--all", "--rate", "fast"}, ExitUsage, "--rate"},
		{"show needs an id", []string{"-b", redisURL, "dlq", "show", "q"}, ExitUsage, "wrong number of arguments"},
		{"bad flag", []string{"-b", redisURL, "dlq", "ls", "--colour"}, ExitUsage, "unknown flag"},
		{"trim needs a bound", []string{"-b", redisURL, "dlq", "trim", "q"}, ExitUsage, "--max-length"},
		{"bad retention", []string{"-b", redisURL, "dlq", "metrics", "--retention", "q=lots"}, ExitUsage, "not a count"},
		{"replay into a dlq", []string{"-b", redisURL, "dlq", "replay", "q", "--all", "--to", "x.dlq"}, ExitUsage, "dead-letter queue"},
		{"unreachable broker", []string{"-b", "amqp://guest:guest@127.0.0.1:1//", "dlq", "ls", "q"}, ExitUnavailable, "unreachable"},
		{"unknown id", []string{"-b", redisURL, "dlq", "show", "fctl_none_" + randHex(3), "abc"}, ExitFailure, "no message abc"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runCmd(context.Background(), t, "", false, tt.args...)
			if r.code != tt.code {
				t.Errorf("exit %d, want %d (stderr %q)", r.code, tt.code, r.stderr)
			}
			lines := strings.Split(strings.TrimRight(r.stderr, "\n"), "\n")
			if len(lines) != 1 || !strings.HasPrefix(lines[0], "fleetctl: ") || !strings.Contains(lines[0], tt.inErr) {
				t.Errorf("stderr %q: want one line with %q", r.stderr, tt.inErr)
			}
		})
	}
	for _, args := range [][]string{{"--help"}, {"dlq", "--help"}, {"dlq", "replay", "--help"}, {"--version"}} {
		if r := runCmd(context.Background(), t, "", false, args...); r.code != 0 || r.out == "" || r.stderr != "" {
			t.Errorf("%v: exit %d, stdout %d bytes, stderr %q", args, r.code, len(r.out), r.stderr)
		}
	}
}

func TestDLQCommands(t *testing.T) {
	for _, e := range brokers(t) {
		t.Run(e.name, func(t *testing.T) {
			q := e.newQueue(t, "cmd")
			reasons := []string{dlq.ReasonUnknownTask, dlq.ReasonDecodeError, dlq.ReasonTaskFailed}
			ids := e.seed(t, q, 6, reasons, []string{"crew.run", "job.run"})
			b := []string{"-b", e.url}

			// ls without a queue: our DLQ with its count (RabbitMQ: through the management API).
			if r := runCmd(context.Background(), t, "", false, append(b, "-o", "json", "dlq", "ls")...); r.code == 0 {
				qs := jsonOut[[]queueOut](t, r)
				i := slices.IndexFunc(qs, func(x queueOut) bool { return x.Queue == q+".dlq" })
				if i < 0 || qs[i].Messages != 6 || qs[i].Origin != q || qs[i].OldestAgeSeconds == nil {
					t.Errorf("ls: %+v", qs)
				}
				if e.name == "amqp" && slices.ContainsFunc(qs, func(x queueOut) bool { return !strings.HasPrefix(x.Queue, "fctl_") }) {
					t.Errorf("ls lists queues of another vhost: %+v", qs)
				}
			} else if e.name == "redis" || !strings.Contains(r.stderr, "management API") {
				t.Errorf("ls: exit %d: %s", r.code, r.stderr)
			} else {
				t.Log("RabbitMQ management API down: ls without a queue not tested")
			}
			// ls QUEUE (work queue and DLQ names alike), filters, pages.
			all := jsonOut[[]entryOut](t, mustRun(t, append(b, "-o", "json", "dlq", "ls", q)...))
			if len(all) != 6 || all[0].TaskID != ids[0] || all[0].Reason != dlq.ReasonUnknownTask || all[0].Source != "fleet" || all[0].Time == nil {
				t.Fatalf("ls: %+v", all)
			}
			page := jsonOut[[]entryOut](t, mustRun(t, append(b, "-o", "json", "dlq", "ls", q+".dlq", "--limit", "2", "--page", "2")...))
			if len(page) != 2 || page[0].TaskID != ids[2] {
				t.Errorf("page 2: %+v", page)
			}
			table := mustRun(t, append(b, "dlq", "ls", q, "--reason", "decode_error", "--task", "job.run")...)
			if !strings.Contains(table.out, all[1].ID) || strings.Count(table.out, "\n") != 3 || !strings.Contains(table.out, "1 messages selected") {
				t.Errorf("filtered table:\n%s", table.out)
			}
			// show: decoded arguments and headers.
			shown := jsonOut[[]map[string]any](t, mustRun(t, append(b, "-o", "json", "dlq", "show", q, all[3].ID)...))
			if len(shown) != 1 || shown[0]["task_id"] != ids[3] || fmt.Sprint(shown[0]["args"]) != "[3 x]" ||
				shown[0]["headers"].(map[string]any)[dlq.HeaderReason] != reasons[0] {
				t.Errorf("show: %v", shown)
			}
			text := mustRun(t, append(b, "dlq", "show", q, ids[3])...).out // by task id
			for _, want := range []string{"Reason:     unknown_task (fleet)", "Args:       [3, \"x\"]", "Boom(3)", "  line 2", "x-fleet-dlq-worker: \"w1@host\""} {
				if !strings.Contains(text, want) {
					t.Errorf("show lacks %q:\n%s", want, text)
				}
			}
			// replay one by ID: back in the work queue, same task id; a missing ID fails.
			r := runCmd(context.Background(), t, "", false, append(b, "-o", "json", "dlq", "replay", q, all[0].ID, "feedfeedfeed")...)
			replayed := jsonOut[[]entryOut](t, r)
			if r.code != ExitFailure || !strings.Contains(r.stderr, "no message feedfeedfeed") || len(replayed) != 1 ||
				replayed[0].Status != "replayed" || replayed[0].To != q {
				t.Errorf("replay: exit %d %s %+v", r.code, r.stderr, replayed)
			}
			if got := e.taskIDs(t, q); !slices.Equal(got, []string{ids[0]}) {
				t.Errorf("work queue holds %v", got)
			}
			// replay --all with a filter, to another queue, dry run first.
			other := q + "_other"
			if err := e.br.DeclareDLQ(context.Background(), other); err != nil {
				t.Fatal(err)
			}
			dry := mustRun(t, append(b, "dlq", "replay", q, "--all", "--reason", "task_failed", "--to", other, "--dry-run")...)
			if !strings.Contains(dry.out, "would replay 2 of 2") || e.depth(t, other) != 0 {
				t.Errorf("dry run:\n%s", dry.out)
			}
			mustRun(t, append(b, "dlq", "replay", q, "--all", "--reason", "task_failed", "--to", other, "--new-id", "--rate", "200/s")...)
			if got := e.taskIDs(t, other); len(got) != 2 || slices.Contains(ids, got[0]) {
				t.Errorf("--to --new-id: %v", got)
			}
			// purge: refused in a pipe, asked on a terminal.
			r = runCmd(context.Background(), t, "", false, append(b, "dlq", "purge", q, "--all", "--task", "job.run")...)
			if r.code != ExitUsage || !strings.Contains(r.stderr, "--yes") {
				t.Errorf("purge in a pipe: exit %d %q", r.code, r.stderr)
			}
			r = runCmd(context.Background(), t, "n\n", true, append(b, "dlq", "purge", q, "--all", "--task", "job.run")...)
			if r.code != ExitFailure || !strings.Contains(r.stderr, "Delete 2 messages from "+q+".dlq? [y/N]") || e.depth(t, q+".dlq") != 3 {
				t.Errorf("purge answered no: exit %d %q, depth %d", r.code, r.stderr, e.depth(t, q+".dlq"))
			}
			r = runCmd(context.Background(), t, "y\n", true, append(b, "dlq", "purge", q, "--all", "--task", "job.run")...)
			if r.code != 0 || e.depth(t, q+".dlq") != 1 || !strings.Contains(r.out, "purged 2") {
				t.Errorf("purge answered yes: exit %d %q %q, depth %d", r.code, r.out, r.stderr, e.depth(t, q+".dlq"))
			}
			// export, purge everything, import twice.
			file := filepath.Join(t.TempDir(), "dlq.jsonl")
			mustRun(t, append(b, "dlq", "export", q, "--file", file)...)
			mustRun(t, append(b, "dlq", "purge", q, "--all", "--yes")...)
			if e.depth(t, q+".dlq") != 0 {
				t.Fatal("purge --all left messages")
			}
			imp := mustRun(t, append(b, "dlq", "import", q, file)...)
			again := mustRun(t, append(b, "-o", "json", "dlq", "import", q, file)...)
			if !strings.Contains(imp.out, "imported 1 messages") || !strings.Contains(again.out, `"skipped": 1`) || e.depth(t, q+".dlq") != 1 {
				t.Errorf("import: %q then %q", imp.out, again.out)
			}
			// trim.
			e.seed(t, q, 4, reasons, []string{"t"})
			tr := jsonOut[[]entryOut](t, mustRun(t, append(b, "-o", "json", "dlq", "trim", q, "--max-length", "2")...))
			if len(tr) != 3 || tr[0].Status != "evicted" || e.depth(t, q+".dlq") != 2 {
				t.Errorf("trim: %+v, depth %d", tr, e.depth(t, q+".dlq"))
			}
		})
	}
}

// An interrupted replay loses and duplicates nothing: the rerun finishes the job.
func TestReplayInterrupted(t *testing.T) {
	for _, e := range brokers(t) {
		t.Run(e.name, func(t *testing.T) {
			q := e.newQueue(t, "intr")
			const n = 120
			ids := e.seed(t, q, n, []string{dlq.ReasonUnknownTask}, []string{"late.task"})
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(600*time.Millisecond, cancel)
			r := runCmd(ctx, t, "", false, "-b", e.url, "dlq", "replay", q, "--all", "--rate", "100/s")
			if r.code != ExitInterrupted || !strings.Contains(r.stderr, "interrupted after") {
				t.Fatalf("interrupted replay: exit %d\n%s\n%s", r.code, r.out, r.stderr)
			}
			moved, left := e.depth(t, q), e.depth(t, q+".dlq")
			if moved == 0 || moved+left != n {
				t.Fatalf("after the interruption: %d moved + %d left != %d", moved, left, n)
			}
			mustRun(t, "-b", e.url, "dlq", "replay", q, "--all")
			got := e.taskIDs(t, q)
			slices.Sort(got)
			slices.Sort(ids)
			if !slices.Equal(got, ids) || e.depth(t, q+".dlq") != 0 {
				t.Fatalf("after the rerun: %d messages in %s (want each of the %d once), %d left", len(got), q, n, e.depth(t, q+".dlq"))
			}
		})
	}
}

// `dlq setup` makes RabbitMQ dead-letter rejected and expired messages of a queue Celery
// declared (no arguments) into its DLQ, where fleetctl reads their x-death.
func TestSetupRabbitMQ(t *testing.T) {
	e := brokers(t)[0]
	mgmt, err := amqp.NewManagement(e.url, "")
	if err != nil {
		t.Fatal(err)
	}
	apiUp := mgmt.Ping(context.Background()) == nil
	q := e.newQueue(t, "setup")
	policy := PolicyPrefix + q
	t.Cleanup(func() {
		_ = mgmt.DeletePolicy(context.Background(), policy)
		_ = mgmt.DeletePolicy(context.Background(), "user-"+q)
	})
	if apiUp {
		// A user policy on the queue is kept: merged into ours.
		if err := mgmt.PutPolicy(context.Background(), amqp.Policy{Name: "user-" + q, Pattern: "^" + q + "$", ApplyTo: "queues",
			Priority: 3, Definition: map[string]any{"max-length": 100000}}); err != nil {
			t.Fatal(err)
		}
		out := jsonOut[[]setupOut](t, mustRun(t, "-b", e.url, "-o", "json", "dlq", "setup", q))
		if len(out) != 1 || out[0].Status != "policy applied" || out[0].Priority != 4 || out[0].Definition["max-length"] == nil ||
			out[0].Definition["dead-letter-routing-key"] != q+".dlq" || !strings.Contains(out[0].Note, "user-"+q) {
			t.Fatalf("setup: %+v", out)
		}
	} else {
		t.Log("management API down: testing the printed rabbitmqctl command")
	}
	// The printed command, run as printed, sets the same policy.
	printed := mustRun(t, "-b", e.url, "dlq", "setup", q, "--print", "--priority", "5")
	line := strings.TrimSpace(printed.out)
	if !strings.HasPrefix(line, "rabbitmqctl set_policy -p '"+e.vhost+"' --priority 5 --apply-to queues '"+policy+"'") {
		t.Fatalf("printed %q", line)
	}
	if out, err := exec.Command("sh", "-c", line).CombinedOutput(); err != nil {
		t.Fatalf("running the printed command: %v\n%s", err, out)
	}
	waitFor(t, "the policy on the queue", func() bool {
		out, _ := exec.Command("rabbitmqctl", "list_queues", "-p", e.vhost, "name", "policy").Output()
		return regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(q) + `\s+` + regexp.QuoteMeta(policy) + `$`).Match(out)
	})

	// A consumer rejects without requeue (what Python's Reject(requeue=False) sends), and a
	// message's TTL runs out.
	conn, err := amqp091.Dial(e.url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	rejected, _ := protocol.EncodeTask(protocol.NewTask("py.rejects", nil, nil))
	expired, _ := protocol.EncodeTask(protocol.NewTask("py.expires", nil, nil))
	for i, m := range []*protocol.Message{rejected, expired} {
		p := amqp091.Publishing{ContentType: m.ContentType, ContentEncoding: m.ContentEncoding, Body: m.Body,
			Headers: amqp091.Table{"id": m.Headers["id"], "task": m.Headers["task"]}, CorrelationId: m.Properties.CorrelationID}
		if i == 1 {
			p.Expiration = "50"
		}
		if err := ch.PublishWithContext(context.Background(), "", q, false, false, p); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			var d amqp091.Delivery
			waitFor(t, "the message to reject", func() bool {
				var ok bool
				d, ok, err = ch.Get(q, false)
				return err == nil && ok
			})
			if err := d.Reject(false); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitFor(t, "both in the DLQ", func() bool { return e.depth(t, q+".dlq") == 2 })
	got := jsonOut[[]entryOut](t, mustRun(t, "-b", e.url, "-o", "json", "dlq", "ls", q))
	want := map[string]string{"py.rejects": dlq.ReasonRejected, "py.expires": dlq.ReasonExpired}
	for _, en := range got {
		if want[en.Task] != en.Reason || en.Source != "broker" || en.Origin != q || en.Attempts != 1 || en.Time == nil {
			t.Errorf("entry %+v", en)
		}
	}
	// Replayed, the rejected one is a plain message again.
	mustRun(t, "-b", e.url, "dlq", "replay", q, "--all", "--task", "py.rejects")
	d, ok, err := ch.Get(q, true)
	if err != nil || !ok || d.Headers["x-death"] != nil || d.Headers[dlq.HeaderReplayed] == nil || d.Headers[dlq.HeaderAttempts] == nil {
		t.Errorf("replayed: ok %v err %v headers %v", ok, err, d.Headers)
	}
}

func TestSetupRedis(t *testing.T) {
	e := brokers(t)[1]
	q := "fctl_setup_" + randHex(4)
	t.Cleanup(func() { deleteQueues(redisURL, q, q+".dlq") })
	r := mustRun(t, "-b", redisURL, "dlq", "setup", q)
	if !strings.Contains(r.out, q+".dlq declared") || !strings.Contains(r.stderr, "no broker-side dead-lettering") {
		t.Errorf("setup on Redis: %q %q", r.out, r.stderr)
	}
	_ = e
}

// The standalone exporter serves gauges equal to the broker's counts and applies retention,
// counting evictions.
func TestMetricsExporter(t *testing.T) {
	for _, e := range brokers(t) {
		t.Run(e.name, func(t *testing.T) {
			q := e.newQueue(t, "metrics")
			e.seed(t, q, 5, []string{dlq.ReasonTaskFailed}, []string{"t"})
			ctx, cancel := context.WithCancel(context.Background())
			var stderr syncBuffer
			done := make(chan int)
			go func() {
				done <- Main(ctx, []string{"-b", e.url, "dlq", "metrics", "--addr", "127.0.0.1:0", q,
					"--retention", q + "=3", "--interval", "200ms", "--min-interval", "100ms"},
					IO{In: strings.NewReader(""), Out: io.Discard, Err: &stderr})
			}()
			defer func() {
				cancel()
				if code := <-done; code != 0 {
					t.Errorf("exporter exit %d: %s", code, stderr.String())
				}
			}()
			var addr string
			waitFor(t, "the exporter to listen", func() bool {
				m := regexp.MustCompile(`http://(\S+)/metrics`).FindStringSubmatch(stderr.String())
				if m != nil {
					addr = m[1]
				}
				return addr != ""
			})
			var body string
			waitFor(t, "retention to evict 2", func() bool {
				resp, err := http.Get("http://" + addr + "/metrics")
				if err != nil {
					return false
				}
				defer resp.Body.Close()
				data, _ := io.ReadAll(resp.Body)
				body = string(data)
				return strings.Contains(body, fmt.Sprintf("fleet_dlq_evicted_total{queue=%q} 2", q)) &&
					strings.Contains(body, fmt.Sprintf("fleet_dlq_messages{queue=%q} 3", q))
			})
			if d := e.depth(t, q+".dlq"); d != 3 {
				t.Errorf("broker holds %d, metrics say 3", d)
			}
			for _, want := range []string{"fleet_dlq_oldest_message_age_seconds{queue=\"" + q + "\"}", "fleet_dlq_last_read_timestamp_seconds", "process_cpu_seconds_total"} {
				if !strings.Contains(body, want) {
					t.Errorf("/metrics lacks %s", want)
				}
			}
			if !strings.Contains(stderr.String(), "evicted by retention") {
				t.Errorf("evictions not logged:\n%s", stderr.String())
			}
		})
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
