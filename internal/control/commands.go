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

	"denis.io/fleet/internal/broker"
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
// run time (add_consumer, cancel_consumer; worker.Worker does).
type ConsumerControl interface {
	AddConsumer(ctx context.Context, q broker.QueueSpec) error
	CancelConsumer(ctx context.Context, queue string) error
}

// QueueLister is implemented by a worker that knows how each consumed queue is bound
// (`inspect active_queues`); without it every queue is shown as broker.TaskQueue.
type QueueLister interface {
	ActiveQueues() []broker.QueueSpec
}

// LimitControl is implemented by a worker whose task limits can change at run time
// (rate_limit, time_limit). Commands checks the task name against Deps.Registered first.
type LimitControl interface {
	SetRateLimit(task, rate string) error
	SetTimeLimit(task string, soft, hard time.Duration) error
}

// The worker supports every run-time change.
var (
	_ ConsumerControl = (*worker.Worker)(nil)
	_ QueueLister     = (*worker.Worker)(nil)
	_ LimitControl    = (*worker.Worker)(nil)
)

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
// as Celery declares task queues (by default a direct exchange of the same name; durable),
// including those added or cancelled at run time.
func (c *commands) activeQueues(context.Context, map[string]any) (any, error) {
	var qs []broker.QueueSpec
	if ql, ok := c.d.Node.(QueueLister); ok {
		qs = ql.ActiveQueues()
	} else {
		for _, q := range c.d.Node.Snapshot().Queues {
			qs = append(qs, broker.TaskQueue(q))
		}
	}
	out := make([]any, 0, len(qs))
	for _, q := range qs {
		kind := q.ExchangeType
		if kind == "" {
			kind = "direct"
		}
		out = append(out, map[string]any{
			"name": q.Name,
			"exchange": map[string]any{"name": q.Exchange, "type": kind, "arguments": nil, "durable": true,
				"passive": false, "auto_delete": false, "delivery_mode": nil, "no_declare": false},
			"routing_key": q.RoutingKey, "queue_arguments": nil, "binding_arguments": nil, "consumer_arguments": nil,
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

// strArg is a string argument; JSON null and a missing key are "", present reports which.
func strArg(args map[string]any, k string) (v string, present bool) {
	switch x := args[k].(type) {
	case string:
		return x, true
	case nil:
		return "", false
	default:
		return fmt.Sprint(x), true
	}
}

// missingArgs is the error Python raises calling a control handler without its required
// arguments (kombu's Node.dispatch replies with repr(exc)).
func missingArgs(fn string, names ...string) error {
	quoted := make([]string, len(names))
	for i, n := range names {
		quoted[i] = "'" + n + "'"
	}
	list := strings.Join(quoted, " and ")
	if len(quoted) > 2 {
		list = strings.Join(quoted[:len(quoted)-1], ", ") + ", and " + quoted[len(quoted)-1]
	}
	plural := "argument"
	if len(names) > 1 {
		plural = "arguments"
	}
	return fmt.Errorf("TypeError(%s)", protocol.Repr(fmt.Sprintf("%s() missing %d required positional %s: %s", fn, len(names), plural, list)))
}

// addConsumer is Celery's add_consumer(queue, exchange=None, exchange_type=None,
// routing_key=None): the exchange defaults to the queue's name, its type to direct, the
// routing key to the queue's name. Celery replies before it acts; the Go worker acts
// first, so a declaration the broker refuses is replied as an error.
func (c *commands) addConsumer(ctx context.Context, args map[string]any) (any, error) {
	q, _ := strArg(args, "queue")
	if _, present := args["queue"]; !present {
		return nil, missingArgs("add_consumer", "queue")
	}
	spec := broker.TaskQueue(q)
	if ex, present := strArg(args, "exchange"); present {
		spec.Exchange = ex
	}
	if kind, _ := strArg(args, "exchange_type"); kind != "" {
		spec.ExchangeType = kind
	}
	if rk, _ := strArg(args, "routing_key"); rk != "" {
		spec.RoutingKey = rk
	}
	if spec.Exchange == "" {
		spec.RoutingKey = q // the default exchange routes by queue name only
	}
	cc, err := c.consumers()
	if err != nil {
		return nil, err
	}
	if err := cc.AddConsumer(ctx, spec); err != nil {
		return nil, err
	}
	return ok("add consumer " + q), nil
}

// cancelConsumer is Celery's cancel_consumer(queue). The reply comes once the worker no
// longer fetches from the queue and has handed its unstarted messages back.
func (c *commands) cancelConsumer(ctx context.Context, args map[string]any) (any, error) {
	q, _ := strArg(args, "queue")
	if _, present := args["queue"]; !present {
		return nil, missingArgs("cancel_consumer", "queue")
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

// celeryRate checks a rate_limit argument the way Celery's rate() parses it. It returns
// the rate as a string for the worker, whether it is falsy in Python (which Celery
// reports as "disabled"), or the error Celery replies with.
func celeryRate(v any) (rate string, falsy bool, reply map[string]any) {
	switch x := v.(type) {
	case nil:
		return "", true, nil
	case bool:
		if !x {
			return "", true, nil
		}
		return "1", false, nil
	case string:
		if x == "" {
			return "", true, nil
		}
		ops, unit, _ := strings.Cut(x, "/")
		if _, err := strconv.ParseFloat(strings.TrimSpace(ops), 64); err != nil {
			exc := "ValueError(" + protocol.Repr("could not convert string to float: "+protocol.Repr(ops)) + ")"
			return "", false, map[string]any{"error": "Invalid rate limit string: " + exc}
		}
		switch unit {
		case "", "s", "m", "h":
		default:
			// Celery's RATE_MODIFIER_MAP lookup raises KeyError outside its ValueError guard.
			return "", false, map[string]any{"error": "KeyError(" + protocol.Repr(unit) + ")"}
		}
		return x, false, nil
	}
	f := number(v)
	return strconv.FormatFloat(f, 'f', -1, 64), f == 0, nil
}

// rateLimit is Celery's rate_limit(task_name, rate_limit): the rate is checked first, then
// the task; the new limit applies from the task's next message on.
func (c *commands) rateLimit(_ context.Context, args map[string]any) (any, error) {
	_, hasTask := args["task_name"]
	_, hasRate := args["rate_limit"]
	switch {
	case !hasTask && !hasRate:
		return nil, missingArgs("rate_limit", "task_name", "rate_limit")
	case !hasTask:
		return nil, missingArgs("rate_limit", "task_name")
	case !hasRate:
		return nil, missingArgs("rate_limit", "rate_limit")
	}
	rate, falsy, reply := celeryRate(args["rate_limit"])
	if reply != nil {
		return reply, nil
	}
	task, _ := strArg(args, "task_name")
	if !c.known(task) {
		c.d.Logger.Error("rate limit attempt for unknown task", "task", task)
		return map[string]any{"error": "unknown task"}, nil
	}
	lc, err := c.limits()
	if err != nil {
		return nil, err
	}
	if err := lc.SetRateLimit(task, rate); err != nil {
		return nil, err
	}
	if falsy {
		return ok("rate limit disabled successfully"), nil
	}
	return ok("new rate limit set successfully"), nil
}

// timeLimit is Celery's time_limit(task_name, hard=None, soft=None): both limits are
// replaced, an absent one meaning no limit.
func (c *commands) timeLimit(_ context.Context, args map[string]any) (any, error) {
	task, _ := strArg(args, "task_name")
	if !c.known(task) {
		c.d.Logger.Error("change time limit attempt for unknown task", "task", task)
		return map[string]any{"error": "unknown task"}, nil
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
