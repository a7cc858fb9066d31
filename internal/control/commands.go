package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"denis.io/fleet/internal/events"
	"denis.io/fleet/internal/protocol"
	"denis.io/fleet/internal/worker"
)

// Node is what remote control needs from the worker.
type Node interface {
	Snapshot() worker.Snapshot
	Revoke(ctx context.Context, ids []string, terminate bool) error
}

// ConsumerControl is implemented by a worker that can start and stop consuming a queue at
// run time (add_consumer, cancel_consumer).
type ConsumerControl interface {
	AddConsumer(ctx context.Context, queue string) error
	CancelConsumer(ctx context.Context, queue string) error
}

// LimitControl is implemented by a worker whose task limits can change at run time
// (rate_limit, time_limit). An unknown task is an error wrapping ErrUnknownTask.
type LimitControl interface {
	SetRateLimit(task, rate string) error
	SetTimeLimit(task string, soft, hard time.Duration) error
}

// ErrUnknownTask is wrapped by LimitControl errors about a task the worker does not know.
var ErrUnknownTask = errors.New("unknown task")

// BrokerInfo is the `broker` section of `inspect stats` (kombu's Connection.info()).
type BrokerInfo struct {
	Hostname    string
	Port        int
	Transport   string // "amqp" or "redis"
	VirtualHost string
	UserID      string
	SSL         bool
}

// BrokerInfoFromURL reads BrokerInfo from a broker URL (never the password).
func BrokerInfoFromURL(raw string) BrokerInfo {
	u, err := url.Parse(raw)
	if err != nil {
		return BrokerInfo{}
	}
	bi := BrokerInfo{Hostname: u.Hostname(), UserID: u.User.Username()}
	switch u.Scheme {
	case "amqps":
		bi.SSL = true
		fallthrough
	case "amqp", "pyamqp":
		bi.Transport, bi.Port = "amqp", 5672
		if bi.SSL {
			bi.Port = 5671
		}
		bi.VirtualHost = "/"
		if p := strings.TrimPrefix(u.Path, "/"); p != "" {
			bi.VirtualHost, _ = url.PathUnescape(p)
		}
	case "rediss":
		bi.SSL = true
		fallthrough
	case "redis":
		bi.Transport, bi.Port = "redis", 6379
		bi.VirtualHost = strings.TrimPrefix(u.Path, "/")
		if bi.VirtualHost == "" {
			bi.VirtualHost = "0"
		}
	}
	if p, err := strconv.Atoi(u.Port()); err == nil {
		bi.Port = p
	}
	return bi
}

// Deps are what Commands needs besides the server.
type Deps struct {
	Node Node
	// Registered lists the task names the worker runs (`inspect registered`).
	Registered func() []string
	// Revoked is the worker's revoked store (`inspect revoked`, mingle `hello`).
	Revoked worker.RevokedStore
	// Events switches task events and sends extra heartbeats; nil: those commands fail.
	Events *events.Dispatcher
	Broker BrokerInfo
	// Conf is what `inspect conf` returns (no secrets).
	Conf    map[string]any
	Version string
	// AllowRemoteShutdown lets `celery control shutdown` stop the worker; Shutdown is
	// then called (after the reply is sent).
	AllowRemoteShutdown bool
	Shutdown            func()
	Logger              *slog.Logger
}

// Commands registers Celery's control and inspect commands on s: ping, stats,
// active_queues, registered, active, reserved, scheduled, revoked, query_task, conf,
// report, clock, hello, revoke, terminate, add_consumer, cancel_consumer, enable_events,
// disable_events, heartbeat, rate_limit, time_limit and shutdown.
func (s *Server) Commands(d Deps) {
	if d.Logger == nil {
		d.Logger = s.log
	}
	c := &commands{s: s, d: d}
	for name, h := range map[string]Handler{
		"ping":            c.ping,
		"stats":           c.stats,
		"active_queues":   c.activeQueues,
		"registered":      c.registered,
		"active":          c.active,
		"reserved":        c.reserved,
		"scheduled":       c.scheduled,
		"revoked":         c.revoked,
		"query_task":      c.queryTask,
		"conf":            c.conf,
		"report":          c.report,
		"clock":           c.clockCmd,
		"hello":           c.hello,
		"revoke":          c.revoke,
		"add_consumer":    c.addConsumer,
		"cancel_consumer": c.cancelConsumer,
		"enable_events":   c.enableEvents,
		"disable_events":  c.disableEvents,
		"heartbeat":       c.heartbeat,
		"rate_limit":      c.rateLimit,
		"time_limit":      c.timeLimit,
		"shutdown":        c.shutdown,
		"terminate":       c.terminate,
	} {
		s.Handle(name, h)
	}
	// Celery's backward-compatible aliases.
	for alias, name := range map[string]string{"dump_conf": "conf", "dump_schedule": "scheduled",
		"dump_reserved": "reserved", "dump_active": "active", "dump_revoked": "revoked", "dump_tasks": "registered"} {
		s.Handle(alias, s.handlers[name])
	}
}

type commands struct {
	s *Server
	d Deps
}

func ok(msg string) map[string]any { return map[string]any{"ok": msg} }

func (c *commands) ping(context.Context, map[string]any) (any, error) { return ok("pong"), nil }

// requestInfo is Celery's Request.info(safe): args and kwargs as values, or as their
// repr strings when safe.
func requestInfo(r worker.RequestSnapshot, safe bool) map[string]any {
	var args, kwargs any = r.Args, r.Kwargs
	if r.Args == nil {
		args = []any{}
	}
	if r.Kwargs == nil {
		kwargs = map[string]any{}
	}
	if safe {
		args, kwargs = r.ArgsRepr, r.KwargsRepr
	}
	var start any
	if !r.TimeStart.IsZero() {
		start = epoch(r.TimeStart)
	}
	return map[string]any{
		"id":           r.ID,
		"name":         r.DisplayName(),
		"args":         args,
		"kwargs":       kwargs,
		"type":         r.DisplayName(),
		"hostname":     r.Hostname,
		"time_start":   start,
		"acknowledged": r.Acknowledged,
		"delivery_info": map[string]any{
			"exchange": r.Exchange, "routing_key": r.RoutingKey,
			"priority": r.Priority, "redelivered": r.Redelivered,
		},
		"worker_pid": r.WorkerPID,
	}
}

func infos(rs []worker.RequestSnapshot, safe bool) []any {
	out := make([]any, 0, len(rs))
	for _, r := range rs {
		out = append(out, requestInfo(r, safe))
	}
	return out
}

func boolArg(args map[string]any, k string) bool {
	switch v := args[k].(type) {
	case bool:
		return v
	case string:
		b, _ := strconv.ParseBool(v)
		return b
	}
	return false
}

func (c *commands) active(_ context.Context, args map[string]any) (any, error) {
	return infos(c.d.Node.Snapshot().Active, boolArg(args, "safe")), nil
}

func (c *commands) reserved(_ context.Context, args map[string]any) (any, error) {
	return infos(c.d.Node.Snapshot().Reserved, boolArg(args, "safe")), nil
}

func scheduledInfo(sc worker.ScheduledSnapshot, safe bool) map[string]any {
	return map[string]any{"eta": isoformat(sc.ETA), "priority": sc.Priority, "request": requestInfo(sc.Request, safe)}
}

func (c *commands) scheduled(_ context.Context, args map[string]any) (any, error) {
	snap := c.d.Node.Snapshot()
	out := make([]any, 0, len(snap.Scheduled))
	for _, sc := range snap.Scheduled {
		out = append(out, scheduledInfo(sc, boolArg(args, "safe")))
	}
	return out, nil
}

func (c *commands) queryTask(_ context.Context, args map[string]any) (any, error) {
	ids := stringList(args["ids"])
	if len(ids) == 0 {
		ids = stringList(args["task_id"])
	}
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	snap := c.d.Node.Snapshot()
	out := map[string]any{}
	for _, group := range []struct {
		state string
		rs    []worker.RequestSnapshot
	}{{"active", snap.Active}, {"reserved", snap.Reserved}} {
		for _, r := range group.rs {
			if want[r.ID] {
				out[r.ID] = []any{group.state, requestInfo(r, false)}
			}
		}
	}
	for _, sc := range snap.Scheduled {
		if want[sc.Request.ID] {
			out[sc.Request.ID] = []any{"scheduled", requestInfo(sc.Request, false)}
		}
	}
	return out, nil
}

func (c *commands) registered(context.Context, map[string]any) (any, error) {
	if c.d.Registered == nil {
		return []any{}, nil
	}
	names := c.d.Registered()
	out := make([]any, len(names))
	for i, n := range names {
		out[i] = n
	}
	return out, nil
}

// activeQueues is kombu's Queue.as_dict(recurse=True) of every consumed queue, declared
// as Celery declares task queues (direct exchange of the same name, durable).
func (c *commands) activeQueues(context.Context, map[string]any) (any, error) {
	qs := c.d.Node.Snapshot().Queues
	out := make([]any, 0, len(qs))
	for _, q := range qs {
		out = append(out, map[string]any{
			"name": q,
			"exchange": map[string]any{"name": q, "type": "direct", "arguments": nil, "durable": true,
				"passive": false, "auto_delete": false, "delivery_mode": nil, "no_declare": false},
			"routing_key": q, "queue_arguments": nil, "binding_arguments": nil, "consumer_arguments": nil,
			"durable": true, "exclusive": false, "auto_delete": false, "no_ack": false, "alias": nil,
			"bindings": []any{}, "no_declare": nil, "expires": nil, "message_ttl": nil, "max_length": nil,
			"max_length_bytes": nil, "max_priority": nil,
		})
	}
	return out, nil
}

// stats is Celery's WorkController.stats(): total, pid, clock (a string), uptime, pool,
// broker, prefetch_count, rusage. pool.processes lists the worker's pid once per
// concurrency slot, so tools that count processes (celery-exporter's
// celery_active_process_count) count slots.
func (c *commands) stats(context.Context, map[string]any) (any, error) {
	snap := c.d.Node.Snapshot()
	total := map[string]any{}
	for k, v := range snap.Totals {
		total[k] = v
	}
	procs := make([]any, snap.Concurrency)
	for i := range procs {
		procs[i] = snap.PID
	}
	uptime := int64(0)
	if !snap.Started.IsZero() {
		uptime = int64(time.Since(snap.Started).Round(time.Second).Seconds())
	}
	b := c.d.Broker
	return map[string]any{
		"total":  total,
		"pid":    snap.PID,
		"clock":  strconv.FormatInt(c.s.clock.Value(), 10),
		"uptime": uptime,
		"pool": map[string]any{
			"max-concurrency": snap.Concurrency, "processes": procs, "max-tasks-per-child": "N/A",
			"put-guarded-by-semaphore": false, "timeouts": []any{0, 0}, "implementation": "fleet:goroutines",
		},
		"broker": map[string]any{
			"hostname": b.Hostname, "userid": b.UserID, "virtual_host": b.VirtualHost, "port": b.Port,
			"insist": false, "ssl": b.SSL, "transport": b.Transport, "connect_timeout": 4,
			"transport_options": map[string]any{}, "login_method": nil, "uri_prefix": nil,
			"heartbeat": 120.0, "failover_strategy": "round-robin", "alternates": []any{},
		},
		"prefetch_count": snap.Prefetch,
		"rusage":         rusage(),
	}, nil
}

func rusage() map[string]any {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return map[string]any{}
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return map[string]any{
		"utime": tv(ru.Utime), "stime": tv(ru.Stime), "maxrss": ru.Maxrss, "ixrss": ru.Ixrss,
		"idrss": ru.Idrss, "isrss": ru.Isrss, "minflt": ru.Minflt, "majflt": ru.Majflt,
		"nswap": ru.Nswap, "inblock": ru.Inblock, "oublock": ru.Oublock, "msgsnd": ru.Msgsnd,
		"msgrcv": ru.Msgrcv, "nsignals": ru.Nsignals, "nvcsw": ru.Nvcsw, "nivcsw": ru.Nivcsw,
	}
}

func (c *commands) revokedIDs(ctx context.Context) (map[string]time.Time, error) {
	if c.d.Revoked == nil {
		return map[string]time.Time{}, nil
	}
	return c.d.Revoked.List(ctx)
}

func (c *commands) revoked(ctx context.Context, _ map[string]any) (any, error) {
	m, err := c.revokedIDs(ctx)
	if err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	out := make([]any, len(ids))
	for i, id := range ids {
		out[i] = id
	}
	return out, nil
}

func (c *commands) conf(context.Context, map[string]any) (any, error) {
	if c.d.Conf == nil {
		return map[string]any{}, nil
	}
	return c.d.Conf, nil
}

func (c *commands) report(context.Context, map[string]any) (any, error) {
	b := c.d.Broker
	text := fmt.Sprintf("software -> fleet:%s (Go worker, %s) kombu-compatible:5.2 py:n/a\n"+
		"            billiard:n/a %s:n/a\nplatform -> system:%s arch:%s\n"+
		"loader   -> n/a\nsettings -> transport:%s results:see conf\n",
		c.d.Version, runtime.Version(), b.Transport, events.SystemName(), runtime.GOARCH, b.Transport)
	return ok(text), nil
}

func (c *commands) clockCmd(context.Context, map[string]any) (any, error) {
	return map[string]any{"clock": c.s.clock.Value()}, nil
}

// hello is mingle: merge the peer's revoked ids and answer with ours and our clock; a
// hello from ourselves is answered with null.
func (c *commands) hello(ctx context.Context, args map[string]any) (any, error) {
	from, _ := args["from_node"].(string)
	if from == c.s.hostname {
		return nil, nil
	}
	if theirs, ok := args["revoked"].(map[string]any); ok && len(theirs) > 0 && c.d.Revoked != nil {
		ids := make([]string, 0, len(theirs))
		for id := range theirs {
			ids = append(ids, id)
		}
		if err := c.d.Revoked.Add(ctx, ids...); err != nil {
			c.d.Logger.Warn("mingle: storing a peer's revoked ids failed", "from", from, "err", err)
		}
	}
	mine, err := c.revokedIDs(ctx)
	if err != nil {
		return nil, err
	}
	revoked := make(map[string]any, len(mine))
	for id, at := range mine {
		// Python's LimitedSet.update wants a float timestamp; MarshalJSON writes float64
		// as Python does, always with a fraction ("1.0").
		revoked[id] = []any{epoch(at), id}
	}
	return map[string]any{"revoked": revoked, "clock": c.s.clock.Forward()}, nil
}

func stringList(v any) []string {
	switch x := v.(type) {
	case string:
		if x == "" {
			return nil
		}
		return []string{x}
	case []any:
		var out []string
		for _, e := range x {
			if s, ok := e.(string); ok && s != "" {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}

// terminate is `celery control terminate SIGNAL ID…`: revoke with terminate.
func (c *commands) terminate(ctx context.Context, args map[string]any) (any, error) {
	a := map[string]any{"task_id": args["task_id"], "terminate": true, "signal": args["signal"]}
	return c.revoke(ctx, a)
}

// revoke is Celery's revoke: flag the ids (discarding queued and held ones), and with
// terminate stop the running ones.
func (c *commands) revoke(ctx context.Context, args map[string]any) (any, error) {
	ids := stringList(args["task_id"])
	if len(ids) == 0 {
		return nil, errors.New("revoke: no task_id")
	}
	terminate := boolArg(args, "terminate")
	var running []string
	if terminate {
		for _, r := range c.d.Node.Snapshot().Active {
			if slices.Contains(ids, r.ID) {
				running = append(running, r.ID)
			}
		}
	}
	if err := c.d.Node.Revoke(ctx, ids, terminate); err != nil {
		return nil, err
	}
	c.d.Logger.Info("tasks flagged as revoked", "ids", ids, "terminate", terminate)
	if terminate {
		if len(running) == 0 {
			return ok("terminate: tasks unknown"), nil
		}
		return ok("terminate: " + strings.Join(running, ", ")), nil
	}
	return ok("tasks " + strings.Join(ids, ", ") + " flagged as revoked"), nil
}

func (c *commands) consumers() (ConsumerControl, error) {
	cc, ok := c.d.Node.(ConsumerControl)
	if !ok {
		return nil, errors.New("this worker cannot change its queues at run time")
	}
	return cc, nil
}

func (c *commands) addConsumer(ctx context.Context, args map[string]any) (any, error) {
	q, _ := args["queue"].(string)
	if q == "" {
		return nil, errors.New("add_consumer: no queue")
	}
	if slices.Contains(c.d.Node.Snapshot().Queues, q) {
		return ok(fmt.Sprintf("already consuming from %s", protocol.Repr(q))), nil
	}
	cc, err := c.consumers()
	if err != nil {
		return nil, err
	}
	if err := cc.AddConsumer(ctx, q); err != nil {
		return nil, err
	}
	return ok("add consumer " + q), nil
}

func (c *commands) cancelConsumer(ctx context.Context, args map[string]any) (any, error) {
	q, _ := args["queue"].(string)
	if q == "" {
		return nil, errors.New("cancel_consumer: no queue")
	}
	cc, err := c.consumers()
	if err != nil {
		return nil, err
	}
	if err := cc.CancelConsumer(ctx, q); err != nil {
		return nil, err
	}
	return ok("no longer consuming from " + q), nil
}

func (c *commands) enableEvents(context.Context, map[string]any) (any, error) {
	if c.d.Events == nil {
		return nil, errors.New("events are off on this worker")
	}
	if c.d.Events.TaskEventsEnabled() {
		return ok("task events already enabled"), nil
	}
	c.d.Events.EnableTaskEvents(true)
	return ok("task events enabled"), nil
}

func (c *commands) disableEvents(context.Context, map[string]any) (any, error) {
	if c.d.Events == nil {
		return nil, errors.New("events are off on this worker")
	}
	if !c.d.Events.TaskEventsEnabled() {
		return ok("task events already disabled"), nil
	}
	c.d.Events.EnableTaskEvents(false)
	return ok("task events disabled"), nil
}

func (c *commands) heartbeat(ctx context.Context, _ map[string]any) (any, error) {
	if c.d.Events != nil {
		c.d.Events.SendHeartbeat(ctx, 5*time.Second)
	}
	return nil, nil
}

func (c *commands) limits() (LimitControl, error) {
	lc, ok := c.d.Node.(LimitControl)
	if !ok {
		return nil, errors.New("this worker cannot change task limits at run time")
	}
	return lc, nil
}

func (c *commands) known(task string) bool {
	return c.d.Registered != nil && slices.Contains(c.d.Registered(), task)
}

func (c *commands) rateLimit(_ context.Context, args map[string]any) (any, error) {
	task, _ := args["task_name"].(string)
	if !c.known(task) {
		return map[string]any{"error": "unknown task " + task}, nil
	}
	rate := ""
	switch v := args["rate_limit"].(type) {
	case string:
		rate = v
	case nil:
	default:
		rate = fmt.Sprint(v)
	}
	lc, err := c.limits()
	if err != nil {
		return nil, err
	}
	if err := lc.SetRateLimit(task, rate); err != nil {
		return nil, err
	}
	if rate == "" || rate == "0" {
		return ok("rate limit disabled successfully"), nil
	}
	return ok("new rate limit set successfully"), nil
}

func (c *commands) timeLimit(_ context.Context, args map[string]any) (any, error) {
	task, _ := args["task_name"].(string)
	if !c.known(task) {
		return map[string]any{"error": "unknown task " + task}, nil
	}
	lc, err := c.limits()
	if err != nil {
		return nil, err
	}
	secs := func(k string) time.Duration { return time.Duration(number(args[k]) * float64(time.Second)) }
	if err := lc.SetTimeLimit(task, secs("soft"), secs("hard")); err != nil {
		return nil, err
	}
	return ok("time limits set successfully"), nil
}

// shutdown stops the worker only when remote shutdown is allowed. Unlike Python's worker,
// which exits before replying, it replies first.
func (c *commands) shutdown(context.Context, map[string]any) (any, error) {
	if !c.d.AllowRemoteShutdown || c.d.Shutdown == nil {
		c.d.Logger.Warn("remote shutdown refused (start the worker with --allow-remote-shutdown to allow it)")
		return nil, errors.New("remote shutdown is disabled on this worker (--allow-remote-shutdown)")
	}
	c.d.Logger.Warn("remote shutdown requested: warm shutdown")
	time.AfterFunc(100*time.Millisecond, c.d.Shutdown)
	return ok("shutting down"), nil
}

func epoch(t time.Time) float64 { return float64(t.UnixMicro()) / 1e6 }

// isoformat is Python's datetime.isoformat() of an aware datetime.
func isoformat(t time.Time) string {
	if t.Nanosecond()/1000 == 0 {
		return t.Format("2006-01-02T15:04:05-07:00")
	}
	return t.Format("2006-01-02T15:04:05.000000-07:00")
}
