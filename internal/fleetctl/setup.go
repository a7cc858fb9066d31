package fleetctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"denis.io/fleet/internal/broker/amqp"
	"denis.io/fleet/internal/dlq"
)

// PolicyPrefix names the RabbitMQ policies `dlq setup` applies: fleet-dlq.<queue>.
const PolicyPrefix = "fleet-dlq."

// DLQPolicy is the RabbitMQ policy that dead-letters what RabbitMQ rejects or expires in
// queue into queue.dlq through the default exchange. A policy, unlike queue arguments,
// can be added to queues Celery has already declared without a 406.
func DLQPolicy(queue string, priority int) amqp.Policy {
	return amqp.Policy{
		Name:     PolicyPrefix + queue,
		Pattern:  "^" + regexp.QuoteMeta(queue) + "$",
		ApplyTo:  "queues",
		Priority: priority,
		Definition: map[string]any{
			"dead-letter-exchange":    "",
			"dead-letter-routing-key": dlq.QueueName(queue),
		},
	}
}

// SetPolicyCommand is the rabbitmqctl command line that applies p in vhost.
func SetPolicyCommand(vhost string, p amqp.Policy) string {
	def, _ := json.Marshal(p.Definition)
	return fmt.Sprintf("rabbitmqctl set_policy -p %s --priority %d --apply-to %s %s %s %s",
		shellQuote(vhost), p.Priority, p.ApplyTo, shellQuote(p.Name), shellQuote(p.Pattern), shellQuote(string(def)))
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// setupOut is one queue in the output of `dlq setup`.
type setupOut struct {
	Queue      string         `json:"queue"`
	DLQ        string         `json:"dlq"`
	Policy     string         `json:"policy,omitempty"`
	Pattern    string         `json:"pattern,omitempty"`
	Priority   int            `json:"priority"`
	Definition map[string]any `json:"definition,omitempty"`
	Status     string         `json:"status"`
	Command    string         `json:"command,omitempty"`
	Note       string         `json:"note,omitempty"`
}

func cmdSetup(ctx context.Context, g *globals, args []string, std IO) error {
	f := newFlags("setup QUEUE... [options]", `Declares QUEUE.dlq and, on RabbitMQ, applies a policy (fleet-dlq.QUEUE) that makes RabbitMQ
dead-letter what it rejects or expires in QUEUE (a Python worker's Reject(requeue=False), a
message TTL) into QUEUE.dlq, where it carries x-death. The queues' own arguments are not
touched, so Python-declared queues keep working (no 406). RabbitMQ applies one policy per
queue: if another one already matches QUEUE, its definition is merged into ours (at a
higher priority) so that nothing it sets is lost.

The policy goes through the management HTTP API when it answers; otherwise (or with
--print) the rabbitmqctl commands to run are printed. On Redis only the DLQ is declared:
Redis has no broker-side dead-lettering.`, g, std)
	printOnly := f.Bool("print", false, "print the rabbitmqctl commands instead of applying the policies")
	priority := f.Int("priority", 0, "priority of the policies (raised above any other policy matching the queue)")
	if err := f.parse(args, 1, -1); err != nil {
		return err
	}
	s, err := open(ctx, g, std)
	if err != nil {
		return err
	}
	defer s.close()
	var out []setupOut
	for _, arg := range f.Args() {
		q := dlq.Label(arg)
		name := dlq.QueueName(q)
		if err := s.br.DeclareDLQ(ctx, name); err != nil {
			return err
		}
		o := setupOut{Queue: q, DLQ: name, Status: "declared"}
		if !s.isAMQP {
			o.Note = "Redis has no broker-side dead-lettering; fleet workers dead-letter into " + name
		}
		out = append(out, o)
	}
	if s.isAMQP {
		if err := applyPolicies(ctx, s, out, *priority, *printOnly); err != nil {
			return err
		}
	}
	if g.output == "json" {
		return writeJSON(std.Out, out)
	}
	printed := false
	for _, o := range out {
		switch {
		case o.Status == "printed":
			fmt.Fprintln(std.Out, o.Command)
			printed = true
		default:
			line := fmt.Sprintf("%s: %s %s", o.Queue, o.DLQ, o.Status)
			if o.Policy != "" {
				line += fmt.Sprintf(", policy %s (priority %d)", o.Policy, o.Priority)
			}
			fmt.Fprintln(std.Out, line)
		}
		if o.Note != "" {
			fmt.Fprintf(std.Err, "%s: %s\n", o.Queue, o.Note)
		}
	}
	if printed {
		fmt.Fprintln(std.Err, "run the commands above on a RabbitMQ node (the management API was not used)")
	}
	return nil
}

// applyPolicies fills in the policy of each queue and applies it, or prints it.
func applyPolicies(ctx context.Context, s *session, out []setupOut, priority int, printOnly bool) error {
	var existing []amqp.Policy
	useAPI := !printOnly
	if useAPI {
		if err := s.mgmt.Ping(ctx); err != nil {
			if !errors.Is(err, amqp.ErrManagementUnavailable) {
				return fmt.Errorf("dlq setup: %w", err)
			}
			s.log.Warn("RabbitMQ management API unavailable; printing the rabbitmqctl commands instead", "err", err)
			useAPI = false
		}
	}
	if useAPI {
		var err error
		if existing, err = s.mgmt.Policies(ctx); err != nil {
			return fmt.Errorf("dlq setup: %w", err)
		}
	}
	for i := range out {
		o := &out[i]
		p := DLQPolicy(o.Queue, priority)
		if useAPI {
			if other := strongestOther(existing, o.Queue, p.Name); other != nil {
				merged := maps.Clone(other.Definition)
				maps.Copy(merged, p.Definition)
				p.Definition = merged
				p.Priority = max(p.Priority, other.Priority+1)
				o.Note = fmt.Sprintf("policy %q (priority %d) also matches %s; RabbitMQ applies one policy per queue, so its definition is merged into %s",
					other.Name, other.Priority, o.Queue, p.Name)
			}
			if info, err := s.mgmt.Queue(ctx, o.Queue); err == nil {
				if _, ok := info.Arguments["x-dead-letter-exchange"]; ok {
					o.Note = strings.TrimPrefix(o.Note+"; ", "; ") + "the queue was declared with its own x-dead-letter-exchange argument, which wins over any policy"
				}
			}
		}
		o.Policy, o.Pattern, o.Priority, o.Definition = p.Name, p.Pattern, p.Priority, p.Definition
		o.Command = SetPolicyCommand(s.mgmt.VHost(), p)
		if !useAPI {
			o.Status = "printed"
			continue
		}
		if err := s.mgmt.PutPolicy(ctx, p); err != nil {
			return fmt.Errorf("dlq setup: policy for %s: %w", o.Queue, err)
		}
		o.Status = waitApplied(ctx, s.mgmt, o.Queue, p.Name)
	}
	return nil
}

// strongestOther is the highest-priority policy other than ours that matches queue.
func strongestOther(ps []amqp.Policy, queue, ours string) *amqp.Policy {
	var best *amqp.Policy
	for i := range ps {
		p := &ps[i]
		if p.Name == ours || (p.ApplyTo != "queues" && p.ApplyTo != "all" && p.ApplyTo != "") {
			continue
		}
		re, err := regexp.Compile(p.Pattern)
		if err != nil || !re.MatchString(queue) {
			continue
		}
		if best == nil || p.Priority > best.Priority {
			best = p
		}
	}
	return best
}

// waitApplied reports whether RabbitMQ shows the policy on the queue (it applies policies
// asynchronously); a queue that does not exist yet gets it when it is declared.
func waitApplied(ctx context.Context, m *amqp.Management, queue, policy string) string {
	deadline := time.Now().Add(10 * time.Second)
	for {
		info, err := m.Queue(ctx, queue)
		var me *amqp.ManagementError
		switch {
		case errors.As(err, &me) && me.Status == http.StatusNotFound:
			return "policy set (applies when " + strconv.Quote(queue) + " is declared)"
		case err == nil && info.Policy == policy:
			return "policy applied"
		case time.Now().After(deadline) || ctx.Err() != nil:
			if err == nil {
				return fmt.Sprintf("policy set, but the queue shows policy %q", info.Policy)
			}
			return "policy set"
		}
		time.Sleep(200 * time.Millisecond)
	}
}
