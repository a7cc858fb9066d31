package result

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"os/exec"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"denis.io/fleet/internal/protocol"
)

// TestPythonReaders stores results with the Go backend and reads them with the real Python
// client: AsyncResult(id, app=Celery(backend=...)).get(timeout=10). In "wait first" cases
// the Python process is already waiting (subscribed) when the result is stored, which only
// works because Store PUBLISHes.
func TestPythonReaders(t *testing.T) {
	needPython(t)
	tests := []struct {
		name      string
		waitFirst bool
		rec       Record
		// wantValue is what get() returns; when wantExc is set get() must raise it instead.
		wantValue any
		wantExc   []any // exc_module, exc_type, args
	}{
		{name: "written before get", rec: Record{Status: protocol.StateSuccess, Result: 42}, wantValue: 42},
		{name: "get waits first", waitFirst: true, rec: Record{Status: protocol.StateSuccess, Result: 42}, wantValue: 42},
		{name: "unicode and nested", rec: Record{Status: protocol.StateSuccess, Result: map[string]any{
			"naïve ☃": []any{"😀", map[string]any{"k": []any{nil, true, 1.5, json12345()}}}, "": "\u0000\n\"",
		}}, wantValue: map[string]any{
			"naïve ☃": []any{"😀", map[string]any{"k": []any{nil, true, 1.5, json12345()}}}, "": "\u0000\n\"",
		}},
		{name: "nan float, waiting", waitFirst: true, rec: Record{Status: protocol.StateSuccess, Result: math.NaN()}, wantValue: math.NaN()},
		{name: "infinities", rec: Record{Status: protocol.StateSuccess, Result: []any{math.Inf(1), math.Inf(-1), -0.5}},
			wantValue: []any{math.Inf(1), math.Inf(-1), -0.5}},
		{name: "ValueError", rec: Record{Status: protocol.StateFailure, Result: Failure("ValueError", ModuleBuiltins, "boom"), Traceback: "Traceback …"},
			wantExc: []any{"builtins", "ValueError", []any{"boom"}}},
		{name: "RuntimeError, waiting", waitFirst: true, rec: Record{Status: protocol.StateFailure, Result: Failure("RuntimeError", ModuleBuiltins, "it broke")},
			wantExc: []any{"builtins", "RuntimeError", []any{"it broke"}}},
		{name: "NotRegistered", rec: Record{Status: protocol.StateFailure, Result: NotRegistered("research.nope")},
			wantExc: []any{"celery.exceptions", "NotRegistered", []any{"research.nope"}}},
		{name: "revoked", rec: Record{Status: protocol.StateRevoked, Result: Revoked(RevokedReasonRevoked)},
			wantExc: []any{"celery.exceptions", "TaskRevokedError", []any{"revoked"}}},
		{name: "unknown module is synthesized", rec: Record{Status: protocol.StateFailure, Result: Failure("GoTimeoutError", "fleet.errors", "deadline exceeded")},
			wantExc: []any{"celery.exceptions", "GoTimeoutError", []any{"deadline exceeded"}}},
	}
	b, c := openTestRedis(t, Options{Expires: 10 * time.Minute})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			rec := tt.rec
			rec.TaskID = newID(t)
			cleanupKeys(t, c, rec.TaskID)

			if !tt.waitFirst {
				if err := b.Store(ctx, rec); err != nil {
					t.Fatal(err)
				}
			}
			cmd := exec.CommandContext(ctx, pythonBin, "testdata/celery_get.py", testRedisURL(), rec.TaskID, "10")
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			if tt.waitFirst {
				waitSubscribed(ctx, t, c, Key(rec.TaskID))
				if err := b.Store(ctx, rec); err != nil {
					t.Fatal(err)
				}
			}
			if err := cmd.Wait(); err != nil {
				t.Fatalf("python: %v\n%s", err, stderr.String())
			}
			out, err := protocol.ParseJSON(stdout.Bytes())
			if err != nil {
				t.Fatalf("python output %q: %v", stdout.String(), err)
			}
			got := out.(map[string]any)
			if tt.wantExc != nil {
				g := []any{got["exc_module"], got["exc_type"], got["args"]}
				if !sameJSON(t, g, tt.wantExc) {
					t.Errorf("get() raised %v, want %v\n%s", g, tt.wantExc, stderr.String())
				}
				return
			}
			if _, raised := got["exc_type"]; raised {
				t.Fatalf("get() raised %v", got)
			}
			if !sameJSON(t, got["value"], tt.wantValue) {
				t.Errorf("get() = %#v, want %#v", got["value"], tt.wantValue)
			}
		})
	}
}

func json12345() any { return json.Number("123456789012345678901234567890") }

// waitSubscribed polls PUBSUB NUMSUB until someone listens on channel.
func waitSubscribed(ctx context.Context, t *testing.T, c *redis.Client, channel string) {
	t.Helper()
	for {
		n, err := c.PubSubNumSub(ctx, channel).Result()
		if err != nil {
			t.Fatalf("pubsub numsub: %v", err)
		}
		if n[channel] > 0 {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("nobody subscribed to %s: %v", channel, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}
