package result

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"denis.io/fleet/internal/protocol"
)

var naiveISO = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?$`)

// TestRedisStoreSuccess stores the document of the captured Celery SUCCESS sample and checks
// the stored JSON field for field, the key order, date_done and the TTL.
func TestRedisStoreSuccess(t *testing.T) {
	ctx := context.Background()
	b, c := openTestRedis(t, Options{})
	id := newID(t)
	cleanupKeys(t, c, id)

	rec := metaCases()[0].rec
	rec.TaskID = id
	before := time.Now().UTC().Add(-time.Second)
	if err := b.Store(ctx, rec); err != nil {
		t.Fatal(err)
	}
	raw, err := c.Get(ctx, Key(id)).Bytes()
	if err != nil {
		t.Fatal(err)
	}

	const sample = `{"status":"SUCCESS","result":5,"traceback":null,"children":[],"date_done":"2026-11-26T14:34:00.221388",
 "name":"research.add","args":[2,3],"kwargs":{},"worker":"research1@vm","retries":0,"queue":"research_tasks",
 "task_id":"d85fcd87-bcd9-425b-a062-23a848698851"}`
	if got, want := objectKeys(t, raw), objectKeys(t, []byte(sample)); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("keys:\n got %v\nwant %v", got, want)
	}
	gv, err := protocol.ParseJSON(raw)
	if err != nil {
		t.Fatal(err)
	}
	wv, _ := protocol.ParseJSON([]byte(sample))
	got, want := gv.(map[string]any), wv.(map[string]any)
	for k, w := range want {
		switch k {
		case "task_id":
			w = id
		case "date_done":
			continue
		}
		if !sameJSON(t, got[k], w) {
			t.Errorf("%s = %#v, want %#v", k, got[k], w)
		}
	}
	dd, _ := got["date_done"].(string)
	if !naiveISO.MatchString(dd) {
		t.Errorf("date_done %q is not naive ISO", dd)
	}
	if d, err := time.Parse("2006-01-02T15:04:05.999999", dd); err != nil || d.Before(before) || d.After(time.Now().UTC().Add(time.Second)) {
		t.Errorf("date_done %q is not now (UTC): %v", dd, err)
	}
	if ttl := c.TTL(ctx, Key(id)).Val(); ttl <= 86400*time.Second-time.Minute || ttl > 86400*time.Second {
		t.Errorf("TTL = %v, want 24h", ttl)
	}

	m, err := b.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if !sameJSON(t, m, got) {
		t.Errorf("Get = %v, want %v", m, got)
	}
}

func TestRedisGetAbsent(t *testing.T) {
	b, _ := openTestRedis(t, Options{})
	m, err := b.Get(context.Background(), newID(t))
	if err != nil || m != nil {
		t.Errorf("Get(absent) = %v, %v; want nil, nil", m, err)
	}
}

// TestRedisSuccessNotOverwritten replays state sequences: once SUCCESS is stored, later
// writes are skipped (Celery's dedupe for duplicate deliveries); other states are overwritten.
func TestRedisSuccessNotOverwritten(t *testing.T) {
	ctx := context.Background()
	b, c := openTestRedis(t, Options{})
	tests := []struct {
		name       string
		states     []string
		wantStatus string
	}{
		{"started then success", []string{protocol.StateStarted, protocol.StateSuccess}, protocol.StateSuccess},
		{"success then failure", []string{protocol.StateSuccess, protocol.StateFailure}, protocol.StateSuccess},
		{"success then retry then started", []string{protocol.StateSuccess, protocol.StateRetry, protocol.StateStarted}, protocol.StateSuccess},
		{"retry then failure", []string{protocol.StateRetry, protocol.StateFailure}, protocol.StateFailure},
		{"failure then success", []string{protocol.StateFailure, protocol.StateSuccess}, protocol.StateSuccess},
		{"revoked then started", []string{protocol.StateRevoked, protocol.StateStarted}, protocol.StateStarted},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := newID(t)
			cleanupKeys(t, c, id)
			for i, s := range tt.states {
				var res any = i
				if s == protocol.StateFailure || s == protocol.StateRetry {
					res = Failure("ValueError", ModuleBuiltins, "x")
				}
				if err := b.Store(ctx, Record{TaskID: id, Status: s, Result: res}); err != nil {
					t.Fatal(err)
				}
			}
			m, err := b.Get(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if m["status"] != tt.wantStatus {
				t.Errorf("status = %v, want %s", m["status"], tt.wantStatus)
			}
			if tt.wantStatus == protocol.StateSuccess && tt.states[0] == protocol.StateSuccess && !sameJSON(t, m["result"], 0) {
				t.Errorf("result = %v: the first SUCCESS was overwritten", m["result"])
			}
		})
	}
}

// TestRedisStoreOverExisting checks the SUCCESS rule against documents written by others:
// SUCCESS found by the fast path (status first) or by decoding (status elsewhere) is kept;
// anything else, undecodable documents included, is overwritten.
func TestRedisStoreOverExisting(t *testing.T) {
	ctx := context.Background()
	b, c := openTestRedis(t, Options{})
	tests := []struct {
		name     string
		existing string
		kept     bool
	}{
		{"celery success", `{"status": "SUCCESS", "result": 1, "task_id": "x"}`, true},
		{"compact success", `{"status":"SUCCESS","result":1}`, true},
		{"status not first", `{"result": 1, "status": "SUCCESS"}`, true},
		{"status in a nested object only", `{"result": {"status": "SUCCESS"}, "status": "STARTED"}`, false},
		{"started", `{"status": "STARTED", "result": {"pid": 1}}`, false},
		{"failure", `{"status": "FAILURE", "result": null}`, false},
		{"undecodable", `not json {`, false},
		{"not an object", `"SUCCESS"`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := newID(t)
			cleanupKeys(t, c, id)
			if err := c.Set(ctx, Key(id), tt.existing, time.Minute).Err(); err != nil {
				t.Fatal(err)
			}
			if err := b.Store(ctx, Record{TaskID: id, Status: protocol.StateFailure,
				Result: Failure("ValueError", ModuleBuiltins, "late")}); err != nil {
				t.Fatal(err)
			}
			got := c.Get(ctx, Key(id)).Val()
			if kept := got == tt.existing; kept != tt.kept {
				t.Errorf("kept = %v, want %v (stored %q)", kept, tt.kept, got)
			}
		})
	}
}

// TestRedisStoreConcurrent stores many results at once (they share pipelines) and checks
// that each call returns only once its own document is stored and published.
func TestRedisStoreConcurrent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, c := openTestRedis(t, Options{})
	const n = 300
	ids := make([]string, n)
	for i := range ids {
		ids[i] = newID(t)
	}
	cleanupKeys(t, c, ids...)
	sub := c.PSubscribe(ctx, KeyPrefix+"fleet-test-*")
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, n)
	for i, id := range ids {
		go func() {
			if err := b.Store(ctx, Record{TaskID: id, Status: protocol.StateSuccess, Result: i}); err != nil {
				errs <- err
				return
			}
			m, err := b.Get(ctx, id)
			switch {
			case err != nil:
				errs <- err
			case m == nil || fmt.Sprint(m["result"]) != fmt.Sprint(i):
				errs <- fmt.Errorf("%s: stored %v, want result %d", id, m, i)
			default:
				errs <- nil
			}
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	want := make(map[string]bool, n)
	for _, id := range ids {
		want[Key(id)] = true
	}
	for len(want) > 0 {
		msg, err := sub.ReceiveMessage(ctx)
		if err != nil {
			t.Fatalf("%d publications missing: %v", len(want), err)
		}
		delete(want, msg.Channel)
	}
}

func TestRedisExpiry(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name     string
		expires  time.Duration
		min, max time.Duration // TTL bounds; -1 = no TTL
	}{
		{"default 24h", 0, 24*time.Hour - time.Minute, 24 * time.Hour},
		{"90s", 90 * time.Second, 80 * time.Second, 90 * time.Second},
		{"sub-second rounds up", 1500 * time.Millisecond, time.Second, 2 * time.Second},
		{"disabled", -1, -1, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, c := openTestRedis(t, Options{Expires: tt.expires})
			id := newID(t)
			cleanupKeys(t, c, id)
			if err := b.Store(ctx, Record{TaskID: id, Status: protocol.StateSuccess, Result: 1}); err != nil {
				t.Fatal(err)
			}
			ttl, err := c.TTL(ctx, Key(id)).Result()
			if err != nil {
				t.Fatal(err)
			}
			if tt.min == -1 {
				if ttl != -1 {
					t.Errorf("TTL = %v, want none", ttl)
				}
				return
			}
			if ttl < tt.min || ttl > tt.max {
				t.Errorf("TTL = %v, want in [%v, %v]", ttl, tt.min, tt.max)
			}
		})
	}
}

// TestRedisPublish checks that a subscriber of the key's channel receives the document.
func TestRedisPublish(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	b, c := openTestRedis(t, Options{})
	id := newID(t)
	cleanupKeys(t, c, id)

	sub := c.Subscribe(ctx, Key(id))
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil { // the subscription confirmation
		t.Fatal(err)
	}
	if err := b.Store(ctx, Record{TaskID: id, Status: protocol.StateSuccess, Result: "hi"}); err != nil {
		t.Fatal(err)
	}
	msg, err := sub.ReceiveMessage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stored := c.Get(ctx, Key(id)).Val()
	if msg.Channel != Key(id) || msg.Payload != stored {
		t.Errorf("published %q on %q, stored %q", msg.Payload, msg.Channel, stored)
	}
}

func TestRedisUnreachable(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := OpenRedis(ctx, "redis://127.0.0.1:1/0?dial_timeout=1s&max_retries=-1", Options{}); err == nil {
		t.Error("OpenRedis on a closed port: want error")
	}

	b, _ := openTestRedis(t, Options{})
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	err := b.Store(ctx, Record{TaskID: newID(t), Status: protocol.StateSuccess})
	if !errors.Is(err, redis.ErrClosed) || !strings.Contains(err.Error(), "result: redis") {
		t.Errorf("Store on a closed backend = %v, want wrapped redis.ErrClosed", err)
	}
}

func TestOpen(t *testing.T) {
	ctx := context.Background()
	pub := &recordingPublisher{}
	tests := []struct {
		name    string
		url     string
		pub     Publisher
		want    string // "nil", "redis", "rpc", or "" for an error
		errHas  string
		cleanup bool
	}{
		{name: "empty disables", url: "", want: "nil"},
		{name: "blank disables", url: "  ", want: "nil"},
		{name: "redis", url: testRedisURL(), want: "redis"},
		{name: "rpc", url: "rpc://", pub: pub, want: "rpc"},
		{name: "rpc with path", url: "rpc://guest@localhost//", pub: pub, want: "rpc"},
		{name: "rpc without broker", url: "rpc://", errHas: "broker"},
		{name: "amqp", url: "amqp://guest:secret@localhost//", errHas: `"amqp"`},
		{name: "database", url: "db+postgresql://u:p@h/db", errHas: `"db+postgresql"`},
		{name: "no scheme", url: "localhost:6379", errHas: "no scheme"},
		{name: "bad redis db", url: "redis://127.0.0.1:6379/x", errHas: "database"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := Open(ctx, tt.url, tt.pub, Options{})
			if tt.want == "" {
				if err == nil || !strings.Contains(err.Error(), tt.errHas) {
					t.Fatalf("err = %v, want one mentioning %s", err, tt.errHas)
				}
				if strings.Contains(err.Error(), "secret") {
					t.Errorf("error leaks the password: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if b != nil {
				t.Cleanup(func() { _ = b.Close() })
			}
			switch tt.want {
			case "nil":
				if b != nil {
					t.Errorf("got %T, want nil", b)
				}
			case "redis":
				if _, ok := b.(*RedisBackend); !ok {
					t.Errorf("got %T, want *RedisBackend", b)
				}
			case "rpc":
				if _, ok := b.(*RPCBackend); !ok {
					t.Errorf("got %T, want *RPCBackend", b)
				}
			}
		})
	}
}

func TestRedisOptions(t *testing.T) {
	tests := []struct {
		url    string
		check  func(*redis.Options) bool
		errHas string
	}{
		{url: "redis://", check: func(o *redis.Options) bool { return o.Addr == "localhost:6379" && o.DB == 0 }},
		{url: "redis://:s3cret@example:6380/7", check: func(o *redis.Options) bool {
			return o.Addr == "example:6380" && o.DB == 7 && o.Password == "s3cret" && o.TLSConfig == nil
		}},
		{url: "redis://user:pw@h/2", check: func(o *redis.Options) bool { return o.Username == "user" && o.Password == "pw" && o.DB == 2 }},
		{url: "rediss://h:6379/1?ssl_cert_reqs=required", check: func(o *redis.Options) bool {
			return o.TLSConfig != nil && !o.TLSConfig.InsecureSkipVerify && o.TLSConfig.ServerName == "h"
		}},
		{url: "rediss://h/1?ssl_cert_reqs=CERT_NONE", check: func(o *redis.Options) bool { return o.TLSConfig.InsecureSkipVerify }},
		{url: "rediss://h/1?ssl_cert_reqs=optional", check: func(o *redis.Options) bool { return !o.TLSConfig.InsecureSkipVerify }},
		{url: "rediss://h/1", check: func(o *redis.Options) bool { return o.TLSConfig != nil && !o.TLSConfig.InsecureSkipVerify }},
		{url: "redis://h/0?socket_timeout=2.5&socket_connect_timeout=1&max_connections=7&health_check_interval=10&retry_on_timeout=true",
			check: func(o *redis.Options) bool {
				return o.ReadTimeout == 2500*time.Millisecond && o.WriteTimeout == 2500*time.Millisecond &&
					o.DialTimeout == time.Second && o.PoolSize == 7
			}},
		{url: "redis://h/0?dial_timeout=3s", check: func(o *redis.Options) bool { return o.DialTimeout == 3*time.Second }},
		{url: "REDIS://h/3", check: func(o *redis.Options) bool { return o.DB == 3 }},
		{url: "rediss://h/1?ssl_cert_reqs=maybe", errHas: "ssl_cert_reqs"},
		{url: "redis://h/1?ssl_cert_reqs=none", errHas: "rediss://"},
		{url: "rediss://h/1?ssl_ca_certs=/nonexistent.pem", errHas: "ssl_ca_certs"},
		{url: "redis://h/0?socket_timeout=soon", errHas: "socket_timeout"},
		{url: "redis://h/0?bogus=1", errHas: "bogus"},
		{url: "redis://h/1/2", errHas: "path"},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			o, err := redisOptions(tt.url)
			if tt.errHas != "" {
				if err == nil || !strings.Contains(err.Error(), tt.errHas) {
					t.Fatalf("err = %v, want one mentioning %q", err, tt.errHas)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(o) {
				t.Errorf("unexpected options %+v (TLS %+v)", o, o.TLSConfig)
			}
		})
	}
}

// TestRedisDuplicateSuccessRepublished: a write that finds SUCCESS stored keeps it and
// publishes the stored document again (a client that missed the first publication, when
// a write failed half-way and is retried, still gets the result); other states are
// overwritten and the new document published.
func TestRedisDuplicateSuccessRepublished(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	b, c := openTestRedis(t, Options{})
	id := newID(t)
	cleanupKeys(t, c, id)
	sub := c.Subscribe(ctx, Key(id))
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		status string
		kept   bool
	}{
		{protocol.StateStarted, false},
		{protocol.StateSuccess, false},
		{protocol.StateFailure, true},
	}
	var success string
	for _, st := range steps {
		var res any = "ok"
		if st.status == protocol.StateFailure {
			res = Failure("ValueError", ModuleBuiltins, "dup")
		}
		if err := b.Store(ctx, Record{TaskID: id, Status: st.status, Result: res}); err != nil {
			t.Fatal(err)
		}
		msg, err := sub.ReceiveMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		stored := c.Get(ctx, Key(id)).Val()
		if msg.Payload != stored {
			t.Fatalf("%s: published %q, stored %q", st.status, msg.Payload, stored)
		}
		if st.status == protocol.StateSuccess {
			success = stored
		}
		if st.kept && stored != success {
			t.Fatalf("%s overwrote SUCCESS: %q", st.status, stored)
		}
	}
}
