package worker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/protocol"
	"denis.io/fleet/internal/result"
)

// errNoChords is returned when a canvas needs chord counting and the result backend
// cannot do it (rpc://, or results disabled), as Celery refuses chords there.
var errNoChords = errors.New("the result backend does not support chords (use the redis:// backend)")

// publishSuccessors sends what follows a successful task, as Celery's trace does before it
// stores SUCCESS: the link callbacks with the result as first argument (several at once
// as one group; group callbacks each as their own group) and the next chain step with the
// rest of the chain. It returns the result tuples of what it sent (the children).
func (w *Worker) publishSuccessors(j *job, retval any) ([]any, error) {
	t := j.t
	var children []any
	opts := func() map[string]any {
		return map[string]any{"parent_id": t.ID, "root_id": rootOf(t)}
	}
	cbs := t.Embed.Callbacks
	switch {
	case len(cbs) == 1:
		r, err := w.applySignature(j, cbs[0], []any{retval}, opts())
		if err != nil {
			return nil, fmt.Errorf("link %s: %w", cbs[0].Task, err)
		}
		children = append(children, r)
	case len(cbs) > 1:
		var plain []protocol.Signature
		for _, cb := range cbs {
			if cb.Type() != protocol.SubtaskGroup {
				plain = append(plain, cb)
				continue
			}
			r, err := w.applySignature(j, cb, []any{retval}, opts())
			if err != nil {
				return nil, fmt.Errorf("link group: %w", err)
			}
			children = append(children, r)
		}
		if len(plain) > 0 {
			r, err := w.applyGroupOf(j, plain, []any{retval}, opts())
			if err != nil {
				return nil, fmt.Errorf("links: %w", err)
			}
			children = append(children, r)
		}
	}
	if chain := t.Embed.Chain; len(chain) > 0 {
		next := chain[len(chain)-1]
		rest := make([]any, len(chain)-1)
		for i, s := range chain[:len(chain)-1] {
			rest[i] = s
		}
		o := opts()
		o["chain"] = rest
		r, err := w.applySignature(j, next, []any{retval}, o)
		if err != nil {
			return nil, fmt.Errorf("chain step %s: %w", next.Task, err)
		}
		children = append(children, r)
	}
	return children, nil
}

// applyGroupOf applies group(sigs) with the given partial args and options.
func (w *Worker) applyGroupOf(j *job, sigs []protocol.Signature, args []any, options map[string]any) (any, error) {
	return w.applySignature(j, protocol.GroupOf(sigs), args, options)
}

// applySignature sends a signature as Celery's signature.apply_async does on a worker:
// chord sizes first, then every message, each publisher-confirmed.
func (w *Worker) applySignature(j *job, s protocol.Signature, args []any, options map[string]any) (any, error) {
	t := j.t
	ap, err := protocol.Apply(s, protocol.ApplyOptions{Args: args, Options: options,
		CurrentID: t.ID, CurrentRootID: rootOf(t), Origin: w.origin})
	if err != nil {
		return nil, err
	}
	log := w.taskLog("task_id", t.ID, "task", t.Name)
	ctx, cancel := context.WithTimeout(w.runCtx, 60*time.Second)
	defer cancel()
	for _, cs := range ap.ChordSizes {
		if w.chords == nil {
			return nil, errNoChords
		}
		err := retryFor(ctx, 30*time.Second, log, "recording a chord size", func() error {
			return w.chords.SetChordSize(ctx, cs.GroupID, cs.Size)
		})
		if err != nil {
			return nil, err
		}
	}
	for _, og := range ap.Messages {
		m, err := protocol.EncodeTask(og.Task)
		if err != nil {
			return nil, err
		}
		if err := w.publishWithRetry(ctx, w.route(og), m, log); err != nil {
			return nil, fmt.Errorf("publish %s[%s]: %w", og.Task.Name, og.Task.ID, err)
		}
		log.Debug("sent", "sent_task", og.Task.Name, "sent_id", og.Task.ID, "group", og.Task.Group)
	}
	return ap.Result, nil
}

// route is Celery's router for a signature the worker sends: its own exchange/routing key
// or queue when the options name them, else the task's configured queue, else the default
// queue; queues are reached through the anonymous exchange.
func (w *Worker) route(og protocol.Outgoing) broker.Publishing {
	if og.Exchange != "" {
		rk := og.RoutingKey
		if rk == "" {
			rk = og.Queue
		}
		return broker.Publishing{Exchange: og.Exchange, RoutingKey: rk}
	}
	q := og.Queue
	if q == "" {
		q = w.cfg.Tasks.For(og.Task.Name).Queue
	}
	if q == "" {
		q = w.cfg.DefaultQueue
	}
	return broker.Publishing{RoutingKey: q}
}

// publishWithRetry publishes m (confirmed), retrying transient failures with backoff
// until ctx ends.
func (w *Worker) publishWithRetry(ctx context.Context, p broker.Publishing, m *protocol.Message, log *taskLog) error {
	p.Message = m
	return retryFor(ctx, 30*time.Second, log, "publishing to "+p.Exchange+"/"+p.RoutingKey, func() error {
		pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		return w.broker.Publish(pctx, p)
	})
}

// chordPart describes one chord header part.
type chordPart struct {
	id    string
	group string
	index *int
	body  protocol.Signature
}

// chordPart counts the task as a finished part of its chord (when it is a chord header
// task) and, for the part that completes it, sends the body or fails it.
func (w *Worker) chordPart(j *job, state string, res any, log *taskLog) {
	t := j.t
	if t.Embed.Chord == nil || t.Group == "" {
		return
	}
	w.chordPartFor(j, chordPart{id: t.ID, group: t.Group, index: t.GroupIndex, body: *t.Embed.Chord}, state, res, log)
}

// chordPartFor is Celery's on_chord_part_return for part p (the running task, or a chain
// step failed on its behalf): count it, and once the header is complete send the body with
// the header results as its first argument, or fail the body with ChordError and send its
// errbacks.
func (w *Worker) chordPartFor(j *job, p chordPart, state string, res any, log *taskLog) {
	log = log.With("chord_group", p.group)
	if w.chords == nil {
		log.Error("chord part not counted: " + errNoChords.Error())
		return
	}
	ctx, cancel := context.WithTimeout(w.runCtx, 60*time.Second)
	defer cancel()
	var ready *result.ChordReady
	err := retryFor(ctx, 30*time.Second, log, "counting a chord part", func() error {
		var err error
		ready, err = w.chords.ChordPartReturn(ctx, result.ChordPart{GroupID: p.group, TaskID: p.id,
			GroupIndex: p.index, State: state, Result: res})
		return err
	})
	if err != nil {
		log.Error("could not count the chord part; the chord may not complete", "error", err)
		return
	}
	if ready == nil {
		return
	}
	if ready.Err != nil {
		log.Info("chord failed", "error", ready.Err.Message)
		w.failChordBody(j, p.body, ready.Err, log)
		return
	}
	if _, err := w.applySignature(j, p.body, []any{ready.Results}, nil); err != nil {
		log.Error("could not send the chord body", "body", p.body.Task, "error", err)
		w.failChordBody(j, p.body, &result.ChordError{Message: fmt.Sprintf("Callback error: %s", err)}, log)
	} else {
		log.Info("chord complete: body sent", "body", p.body.Task, "body_id", p.body.ID(), "parts", len(ready.Results))
	}
	if err := w.chords.ChordCleanup(ctx, p.group); err != nil {
		log.Warn("could not clean up the chord keys", "error", err)
	}
}

// failChordBody is Celery's chord_error_from_stack: the body's errbacks are sent (as a
// group, with the body's id as argument) and the body is marked FAILURE with the
// ChordError.
func (w *Worker) failChordBody(j *job, body protocol.Signature, cerr *result.ChordError, log *taskLog) {
	bodyID := body.ID()
	if ebs := body.Options["link_error"]; ebs != nil {
		sigs, err := signatures(ebs)
		if err != nil {
			log.Error("chord body has bad errbacks", "error", err)
		} else if len(sigs) > 0 {
			if _, err := w.applyGroupOf(j, sigs, []any{bodyID}, map[string]any{
				"parent_id": bodyID, "root_id": bodyID}); err != nil {
				log.Error("could not send the chord body's errbacks", "error", err)
			}
		}
	}
	if bodyID == "" || w.results == nil {
		return
	}
	reply, _ := body.Options["reply_to"].(string)
	tb := fmt.Sprintf("Traceback (most recent call last):\n  Go worker %s\ncelery.exceptions.ChordError: %s\n",
		w.cfg.Hostname, cerr.Message)
	rec := result.Record{TaskID: bodyID, Status: protocol.StateFailure, Result: cerr.Exception(),
		Traceback: tb, ReplyTo: reply, CorrelationID: bodyID}
	if err := w.storeWithRetry(rec, log); err != nil {
		log.Error("could not mark the chord body failed", "body_id", bodyID, "error", err)
	}
}

// signatures converts a link/link_error option (a signature or a list) to signatures.
func signatures(v any) ([]protocol.Signature, error) {
	list, ok := v.([]any)
	if !ok {
		list = []any{v}
	}
	out := make([]protocol.Signature, 0, len(list))
	for _, it := range list {
		if s, ok := it.(protocol.Signature); ok {
			out = append(out, s)
			continue
		}
		s, err := protocol.SignatureFromValue(it)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}
