package autoscale

import (
	"context"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"denis.io/fleet/internal/broker/amqp"
)

const testAMQPURL = "amqp://guest:guest@127.0.0.1:5672/"

// TestRabbitProbe reads a real RabbitMQ queue with 3 ready and 2 unacknowledged messages
// through the management API, then through the AMQP fallback when the API is unreachable.
func TestRabbitProbe(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := amqp091.Dial(testAMQPURL)
	if err != nil {
		t.Fatalf("RabbitMQ at %s (run `make services`): %v", testAMQPURL, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	queue := unique("as-probe")
	if _, err := ch.QueueDeclare(queue, false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if ch, err := conn.Channel(); err == nil {
			_, _ = ch.QueueDelete(queue, false, false, false)
		}
	})
	for range 5 {
		if err := ch.PublishWithContext(ctx, "", queue, false, false, amqp091.Publishing{Body: []byte("{}")}); err != nil {
			t.Fatal(err)
		}
	}
	if err := ch.Qos(2, 0, false); err != nil {
		t.Fatal(err)
	}
	msgs, err := ch.Consume(queue, "", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		select {
		case <-msgs:
		case <-ctx.Done():
			t.Fatal("no delivery")
		}
	}

	b, err := amqp.New(ctx, amqp.Options{URL: testAMQPURL})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	mgmt, err := NewManagementClient(testAMQPURL, "")
	if err != nil {
		t.Fatal(err)
	}
	deadMgmt, err := NewManagementClient(testAMQPURL, "http://127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name     string
		probe    *RabbitProbe
		queue    string
		want     QueueSample
		degraded bool
		wantErr  bool
	}{
		{"management API: ready and unacked", &RabbitProbe{Management: mgmt, AMQP: b}, queue,
			QueueSample{Ready: 3, InFlight: 2, RateKnown: true}, false, false},
		{"API down: AMQP passive declare, in-flight unknown", &RabbitProbe{Management: deadMgmt, AMQP: b}, queue,
			QueueSample{Ready: 3, InFlight: -1}, true, false},
		{"a queue not declared yet is empty", &RabbitProbe{Management: mgmt, AMQP: b}, unique("as-none"),
			QueueSample{RateKnown: true}, false, false},
		{"API down and no fallback", &RabbitProbe{Management: deadMgmt}, queue, QueueSample{}, false, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var degraded bool
			tc.probe.OnDegraded(func(d bool, _ error) { degraded = d })
			var got QueueSample
			// The management API's counters refresh every few seconds.
			deadline := time.Now().Add(60 * time.Second)
			for {
				got, err = tc.probe.Probe(ctx, tc.queue)
				if tc.wantErr || (err == nil && got.Ready == tc.want.Ready && got.InFlight == tc.want.InFlight) || time.Now().After(deadline) {
					break
				}
				time.Sleep(500 * time.Millisecond)
			}
			if (err != nil) != tc.wantErr {
				t.Fatalf("err %v", err)
			}
			if tc.wantErr {
				return
			}
			if got.Ready != tc.want.Ready || got.InFlight != tc.want.InFlight || got.RateKnown != tc.want.RateKnown || got.At.IsZero() {
				t.Fatalf("sample %+v, want %+v", got, tc.want)
			}
			if degraded != tc.degraded {
				t.Fatalf("degraded %v", degraded)
			}
		})
	}
}

func TestManagementClientURLs(t *testing.T) {
	cases := []struct {
		broker, mgmt, want string
		err                bool
	}{
		{"amqp://u:p@rabbit:5672/vh", "", "http://rabbit:15672", false},
		{"amqps://u:p@rabbit:5671/", "", "https://rabbit:15672", false},
		{"pyamqp://guest@h//", "https://admin:x@mgmt.example:443/rabbit/", "https://mgmt.example:443/rabbit", false},
		{"amqp://h/", "ftp://x", "", true},
	}
	for _, tc := range cases {
		m, err := NewManagementClient(tc.broker, tc.mgmt)
		if (err != nil) != tc.err {
			t.Fatalf("%s %s: err %v", tc.broker, tc.mgmt, err)
		}
		if err == nil && m.Endpoint() != tc.want {
			t.Errorf("%s %s: endpoint %s, want %s", tc.broker, tc.mgmt, m.Endpoint(), tc.want)
		}
	}
}
