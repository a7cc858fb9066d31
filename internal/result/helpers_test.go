package result

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"testing"

	"github.com/redis/go-redis/v9"

	"denis.io/fleet/internal/protocol"
)

// pythonBin is the Debian python3 with Celery 5.2.6 (never the pyenv one).
const pythonBin = "/usr/bin/python3"

// testRedisURL is the Redis the tests use: DB 11 unless FLEET_TEST_REDIS_URL says otherwise.
// Every test uses task ids with a random suffix and deletes its keys, so the DB may be
// shared.
func testRedisURL() string {
	if u := os.Getenv("FLEET_TEST_REDIS_URL"); u != "" {
		return u
	}
	return "redis://127.0.0.1:6379/11"
}

func needPython(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(pythonBin); err != nil {
		t.Skipf("%s not available: %v", pythonBin, err)
	}
}

// newID returns a unique task id for this test run.
func newID(t *testing.T) string {
	t.Helper()
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	h := hex.EncodeToString(b)
	return "fleet-test-" + h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// openTestRedis opens the backend under test and a plain client on the same DB; both are
// closed, and the given task keys deleted, at cleanup.
func openTestRedis(t *testing.T, o Options) (*RedisBackend, *redis.Client) {
	t.Helper()
	ctx := context.Background()
	b, err := OpenRedis(ctx, testRedisURL(), o)
	if err != nil {
		t.Fatalf("open redis backend (is Redis running at %s?): %v", testRedisURL(), err)
	}
	opts, err := redis.ParseURL(testRedisURL())
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opts)
	t.Cleanup(func() {
		_ = b.Close()
		_ = c.Close()
	})
	return b, c
}

// cleanupKeys deletes the result keys of ids when the test ends.
func cleanupKeys(t *testing.T, c *redis.Client, ids ...string) {
	t.Helper()
	t.Cleanup(func() {
		for _, id := range ids {
			c.Del(context.Background(), Key(id))
		}
	})
}

// sameJSON compares two JSON-like values by their Python-compatible encoding (so 1 and
// json.Number("1"), or NaN and NaN, are the same).
func sameJSON(t *testing.T, got, want any) bool {
	t.Helper()
	g, err := protocol.MarshalJSON(got)
	if err != nil {
		t.Fatalf("marshal %#v: %v", got, err)
	}
	w, err := protocol.MarshalJSON(want)
	if err != nil {
		t.Fatalf("marshal %#v: %v", want, err)
	}
	return bytes.Equal(g, w)
}

func runPython(t *testing.T, stdin []byte, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(pythonBin, args...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", pythonBin, args, err, stderr.String())
	}
	return out
}
