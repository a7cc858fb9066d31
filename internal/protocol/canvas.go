package protocol

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"
)

// Subtask types of a serialized signature (its subtask_type).
const (
	SubtaskChain = "chain"
	SubtaskGroup = "group"
	SubtaskChord = "chord"
)

// Type is the signature's subtask_type: "" for a plain task, or SubtaskChain, SubtaskGroup,
// SubtaskChord.
func (s Signature) Type() string {
	if s.SubtaskType == nil {
		return ""
	}
	return *s.SubtaskType
}

// ID is options.task_id: the id the producer froze for this signature, or "".
func (s Signature) ID() string {
	id, _ := s.Options["task_id"].(string)
	return id
}

// GroupOf returns a group signature of sigs, as celery.group(sigs) serializes.
func GroupOf(sigs []Signature) Signature {
	tasks := make([]any, len(sigs))
	for i, s := range sigs {
		tasks[i] = s
	}
	st := SubtaskGroup
	return Signature{Task: "celery.group", Args: []any{}, Kwargs: map[string]any{"tasks": tasks},
		Options: map[string]any{}, SubtaskType: &st}
}

// Outgoing is one task message a worker publishes when it applies a signature.
type Outgoing struct {
	Task *Task
	// Queue is options.queue, or "" when the signature names none: the publisher then
	// routes by its own rules (task routes, default queue), as Celery's router does.
	Queue string
	// Exchange and RoutingKey are options.exchange and options.routing_key when given.
	Exchange   string
	RoutingKey string
}

// ChordSize is a chord header size to record (Redis `celery-taskset-meta-<gid>.s`) before the
// header's messages are published.
type ChordSize struct {
	GroupID string
	Size    int
}

// Applied is what applying a signature produces: the messages to publish in order, the
// chord sizes to record first, and the result tuple (AsyncResult.as_tuple() or
// GroupResult.as_tuple()) the parent lists in its result's children.
type Applied struct {
	Messages   []Outgoing
	ChordSizes []ChordSize
	Result     any
}

// ApplyOptions are the arguments of Signature.apply_async as a worker calls it.
type ApplyOptions struct {
	// Args are partial args, prepended to the signature's args unless it is immutable.
	Args []any
	// Kwargs are merged into the signature's kwargs (unless immutable).
	Kwargs map[string]any
	// Options are execution options merged over the signature's options (group_id of a
	// signature that has one is kept); nil values are ignored, as Celery drops them.
	Options map[string]any
	// CurrentID and CurrentRootID are the task the worker is running: the parent_id and
	// root_id of what it sends when the options do not name them (Celery's
	// current_worker_task).
	CurrentID     string
	CurrentRootID string
	// Origin is the origin header (default AnonNodeName()).
	Origin string
	// Now is the time countdown and numeric expires count from (default time.Now()).
	Now time.Time
}

// Apply returns the messages Celery 5.2 sends when a worker calls
// signature.apply_async(args, kwargs, **options) (celery/canvas.py): a plain task gives
// one message; a group gives one per member with the group id (options.task_id or a new
// one), nested groups flattened; a chord records its header size and sends the header
// members, each carrying the body in its embed (Redis chord counting, §7); a chain sends
// its first step with the rest, reversed, in the embed. Frozen ids in options.task_id are
// kept; missing ones are created.
func Apply(s Signature, a ApplyOptions) (*Applied, error) {
	if a.Now.IsZero() {
		a.Now = time.Now()
	}
	if a.Origin == "" {
		a.Origin = AnonNodeName()
	}
	out := &Applied{}
	res, err := apply(out, s, a.Args, a.Kwargs, dropNil(a.Options), &a, 0)
	if err != nil {
		return nil, err
	}
	out.Result = res
	return out, nil
}

// maxCanvasDepth bounds the nesting of signatures followed by Apply.
const maxCanvasDepth = 64

func apply(out *Applied, s Signature, args []any, kwargs, options map[string]any, a *ApplyOptions, depth int) (any, error) {
	if depth > maxCanvasDepth {
		return nil, errors.New("protocol: apply signature: canvas nested too deeply")
	}
	switch s.Type() {
	case "":
		return applyTask(out, s, args, kwargs, options, a)
	case SubtaskGroup:
		return applyGroup(out, s, args, kwargs, options, a, depth)
	case SubtaskChord:
		return applyChord(out, s, args, kwargs, options, a, depth)
	case SubtaskChain:
		return applyChain(out, s, args, kwargs, options, a, depth)
	default:
		return nil, fmt.Errorf("protocol: apply signature %s: unknown subtask_type %q", s.Task, s.Type())
	}
}

// clone copies s deeply enough to change its args, kwargs and options.
func (s Signature) clone() Signature {
	c := s
	c.Args = slices.Clone(s.Args)
	if c.Args == nil {
		c.Args = []any{}
	}
	c.Kwargs = maps.Clone(s.Kwargs)
	if c.Kwargs == nil {
		c.Kwargs = map[string]any{}
	}
	c.Options = maps.Clone(s.Options)
	if c.Options == nil {
		c.Options = map[string]any{}
	}
	if s.SubtaskType != nil {
		st := *s.SubtaskType
		c.SubtaskType = &st
	}
	return c
}

// merge is Signature._merge: options override the signature's, except a group_id it has;
// partial args are prepended and kwargs merged unless the signature is immutable.
func (s Signature) merge(args []any, kwargs, options map[string]any) Signature {
	c := s.clone()
	for k, v := range options {
		if _, has := c.Options[k]; k == "group_id" && has {
			continue
		}
		c.Options[k] = v
	}
	if !s.Immutable {
		if len(args) > 0 {
			c.Args = append(slices.Clone(args), c.Args...)
		}
		maps.Copy(c.Kwargs, kwargs)
	}
	return c
}

// freeze is Signature.freeze: assign the task id and the ids the options do not have yet.
func (s *Signature) freeze(id, groupID string, chord any, rootID, parentID string, groupIndex *int) string {
	tid := s.ID()
	if tid == "" {
		tid = id
		if tid == "" {
			tid = NewUUID()
		}
		s.Options["task_id"] = tid
	}
	if rootID != "" {
		s.Options["root_id"] = rootID
	}
	if parentID != "" {
		s.Options["parent_id"] = parentID
	}
	if _, has := s.Options["group_id"]; groupID != "" && !has {
		s.Options["group_id"] = groupID
	}
	if chord != nil {
		s.Options["chord"] = chord
	}
	if groupIndex != nil {
		s.Options["group_index"] = *groupIndex
	}
	return tid
}

func applyTask(out *Applied, s Signature, args []any, kwargs, options map[string]any, a *ApplyOptions) (any, error) {
	m := s.merge(args, kwargs, options)
	og, err := outgoingFor(m, a)
	if err != nil {
		return nil, err
	}
	out.Messages = append(out.Messages, og)
	return resultTuple(og.Task.ID), nil
}

func resultTuple(id string) any { return []any{[]any{id, nil}, nil} }

// applyGroup is group.apply_async: the group id is options.task_id (or new), every member
// (nested groups flattened) is frozen with it and sent with the partial args; a chord size
// is recorded when the members carry a chord.
func applyGroup(out *Applied, s Signature, args []any, kwargs, options map[string]any, a *ApplyOptions, depth int) (any, error) {
	opts := maps.Clone(s.Options)
	if opts == nil {
		opts = map[string]any{}
	}
	maps.Copy(opts, options)
	gid, _ := opts["task_id"].(string)
	delete(opts, "task_id")
	if gid == "" {
		gid = NewUUID()
	}
	opts["group_id"] = gid
	rootID, _ := opts["root_id"].(string)

	var chordOpt any
	if c, ok := opts["chord"]; ok {
		chordOpt = c
		delete(opts, "chord")
	}
	members, err := flattenGroup(s, depth)
	if err != nil {
		return nil, err
	}
	results := make([]any, 0, len(members))
	size := 0
	for i := range members {
		m := &members[i]
		m.freeze("", gid, nil, rootID, "", nil)
		co := chordOpt
		if co == nil {
			co = m.Options["chord"]
		}
		n, err := descend(*m, depth)
		if err != nil {
			return nil, err
		}
		size += n
		if co != nil && i == len(members)-1 {
			out.ChordSizes = append(out.ChordSizes, ChordSize{GroupID: gid, Size: size})
		}
		mo := maps.Clone(opts)
		if co != nil {
			mo["chord"] = co
		}
		r, err := apply(out, *m, args, kwargs, mo, a, depth+1)
		if err != nil {
			return nil, err
		}
		results = append(results, r)
	}
	return []any{[]any{gid, nil}, results}, nil
}

// flattenGroup returns the members of a group signature, nested groups unrolled, each a
// copy.
func flattenGroup(s Signature, depth int) ([]Signature, error) {
	if depth > maxCanvasDepth {
		return nil, errors.New("protocol: group nested too deeply")
	}
	tasks, err := signatureItems(s.Kwargs["tasks"])
	if err != nil {
		return nil, fmt.Errorf("protocol: group %s: tasks: %w", s.ID(), err)
	}
	var out []Signature
	for _, t := range tasks {
		if t.Type() == SubtaskGroup {
			sub, err := flattenGroup(t, depth+1)
			if err != nil {
				return nil, err
			}
			out = append(out, sub...)
			continue
		}
		out = append(out, t.clone())
	}
	return out, nil
}

// applyChord is chord.apply_async / chord.run: the body is frozen with the options, the
// header members with the group id, the body (as their chord) and their group_index; the
// header size is recorded before the members are sent with the partial args. An empty
// header sends the body at once with [] as its argument.
func applyChord(out *Applied, s Signature, args []any, kwargs, options map[string]any, a *ApplyOptions, depth int) (any, error) {
	if !s.Immutable && len(args) > 0 {
		args = append(slices.Clone(args), s.Args...)
	} else {
		args = s.Args
	}
	bodyV, ok := kwargs["body"]
	if !ok || bodyV == nil {
		bodyV = s.Kwargs["body"]
	}
	body, err := toSignature(bodyV)
	if err != nil {
		return nil, fmt.Errorf("protocol: chord body: %w", err)
	}
	body = body.merge(nil, nil, options)
	merged := maps.Clone(s.Options)
	if merged == nil {
		merged = map[string]any{}
	}
	maps.Copy(merged, options)
	optTaskID, _ := merged["task_id"].(string)
	delete(merged, "task_id")

	header, err := toSignature(s.Kwargs["header"])
	if err != nil {
		// A plain list of signatures is also accepted as the header.
		items, lerr := signatureItems(s.Kwargs["header"])
		if lerr != nil {
			return nil, fmt.Errorf("protocol: chord header: %w", err)
		}
		header = GroupOf(items)
	}
	if header.Type() != SubtaskGroup {
		header = GroupOf([]Signature{header})
	}
	gid := header.ID()
	if gid == "" {
		gid = NewUUID()
	}
	rootID, _ := body.Options["root_id"].(string)
	maps.Copy(body.Options, merged)
	bodyID := body.freeze(optTaskID, "", nil, rootID, "", nil)
	delete(merged, "chain")
	delete(merged, "chord")

	members, err := flattenGroup(header, depth)
	if err != nil {
		return nil, err
	}
	if len(members) == 0 {
		return apply(out, body, []any{[]any{}}, nil, nil, a, depth+1)
	}
	parentID, _ := header.Options["parent_id"].(string)
	memberRoot := rootID
	if r, _ := header.Options["root_id"].(string); r != "" {
		memberRoot = r
	}
	size := 0
	for i := range members {
		idx := i
		members[i].freeze("", gid, body, memberRoot, parentID, &idx)
		n, err := descend(members[i], depth)
		if err != nil {
			return nil, err
		}
		size += n
	}
	out.ChordSizes = append(out.ChordSizes, ChordSize{GroupID: gid, Size: size})
	for i := range members {
		mo := maps.Clone(merged)
		mo["group_id"] = gid
		mo["chord"] = body
		if _, err := apply(out, members[i], args, nil, mo, a, depth+1); err != nil {
			return nil, err
		}
	}
	return resultTuple(bodyID), nil
}

// applyChain is chain.apply_async / chain.run: the steps are prepared in reverse (nested
// chains spliced, a group followed by a step upgraded to a chord), every step frozen, and
// the first one sent with the others, reversed, as its chain.
func applyChain(out *Applied, s Signature, args []any, kwargs, options map[string]any, a *ApplyOptions, depth int) (any, error) {
	opts := maps.Clone(s.Options)
	if opts == nil {
		opts = map[string]any{}
	}
	maps.Copy(opts, options)
	if !s.Immutable && len(args) > 0 {
		args = append(slices.Clone(args), s.Args...)
	} else {
		args = s.Args
	}
	steps, err := signatureItems(s.Kwargs["tasks"])
	if err != nil {
		return nil, fmt.Errorf("protocol: chain: tasks: %w", err)
	}
	if len(steps) == 0 {
		return nil, nil
	}
	rootID, _ := opts["root_id"].(string)
	lastID, _ := opts["task_id"].(string)
	groupID, _ := opts["group_id"].(string)
	var groupIndex *int
	if n, ok := toInt(opts["group_index"]); ok && opts["group_index"] != nil {
		groupIndex = &n
	}
	chordBody := opts["chord"]
	linkErr := asList(opts["link_error"])

	var prepared []Signature // in reverse: the last step first
	var prevID string
	spliced := 0
	for i := 0; len(steps) > 0; {
		t := steps[len(steps)-1]
		steps = steps[:len(steps)-1]
		isFirst, isLast := len(steps) == 0, i == 0
		if t.Type() == SubtaskGroup {
			// maybe_unroll_group: a group of one is that one task.
			if items, err := signatureItems(t.Kwargs["tasks"]); err == nil && len(items) == 1 {
				t = items[0]
			}
		}
		if isFirst {
			t = t.merge(args, kwargs, nil)
		} else {
			t = t.clone()
		}
		if t.Type() == SubtaskChain {
			if spliced++; spliced > maxCanvasDepth {
				return nil, errors.New("protocol: chain: nested too deeply")
			}
			inner, err := signatureItems(t.Kwargs["tasks"])
			if err != nil {
				return nil, fmt.Errorf("protocol: chain: nested chain: %w", err)
			}
			steps = append(steps, inner...)
			continue
		}
		if t.Type() == SubtaskGroup && len(prepared) > 0 {
			// group(...) | s is upgraded to chord(group, s).
			prev := prepared[len(prepared)-1]
			prepared = prepared[:len(prepared)-1]
			st := SubtaskChord
			t = Signature{Task: "celery.chord", Args: []any{},
				Kwargs:  map[string]any{"header": t, "body": prev, "kwargs": map[string]any{}},
				Options: map[string]any{"task_id": prevID}, SubtaskType: &st}
			if rootID != "" {
				t.Options["root_id"] = rootID
			}
		}
		var id string
		if isLast {
			id = t.freeze(lastID, groupID, chordBody, rootID, "", groupIndex)
		} else {
			id = t.freeze("", "", nil, rootID, "", nil)
		}
		if t.Type() == SubtaskChord {
			if b, err := toSignature(t.Kwargs["body"]); err == nil && b.ID() != "" {
				id = b.ID()
			}
		}
		i++
		if len(linkErr) > 0 {
			if err := addLinkError(&t, linkErr); err != nil {
				return nil, fmt.Errorf("protocol: chain: link_error: %w", err)
			}
		}
		prepared = append(prepared, t)
		prevID = id
	}
	if link, ok := opts["link"]; ok && link != nil {
		prepared[0].Options["link"] = appendUnique(asList(prepared[0].Options["link"]), asList(link))
	}
	first := prepared[len(prepared)-1]
	rest := prepared[:len(prepared)-1]
	// chain.run passes on only its remaining options: ids, links and the chord were used
	// while freezing the steps above.
	fo := maps.Clone(opts)
	for _, k := range []string{"task_id", "group_id", "group_index", "chord", "link", "link_error",
		"root_id", "parent_id"} {
		delete(fo, k)
	}
	// _prepare_chain_from_options: an outer chain's remaining steps run after this one's.
	chain := slices.Clone(asList(opts["chain"]))
	for _, r := range rest {
		chain = append(chain, r)
	}
	if chain == nil {
		chain = []any{}
	}
	fo["chain"] = chain
	if _, err := apply(out, first, nil, nil, fo, a, depth+1); err != nil {
		return nil, err
	}
	return resultTuple(prevIDOf(prepared)), nil
}

// addLinkError is Signature.link_error for each kind: a chord passes the errbacks to its
// body, a group to each of its members, a task keeps them in options.link_error.
func addLinkError(s *Signature, ebs []any) error {
	switch s.Type() {
	case SubtaskChord:
		body, err := toSignature(s.Kwargs["body"])
		if err != nil {
			return err
		}
		body = body.clone()
		if err := addLinkError(&body, ebs); err != nil {
			return err
		}
		s.Kwargs["body"] = body
	case SubtaskGroup:
		items, err := signatureItems(s.Kwargs["tasks"])
		if err != nil {
			return err
		}
		tasks := make([]any, len(items))
		for i, it := range items {
			it = it.clone()
			if err := addLinkError(&it, ebs); err != nil {
				return err
			}
			tasks[i] = it
		}
		s.Kwargs["tasks"] = tasks
	default:
		s.Options["link_error"] = appendUnique(asList(s.Options["link_error"]), ebs)
	}
	return nil
}

// appendUnique is append_to_list_option: values already in the list are not added again.
func appendUnique(list []any, values []any) []any {
	out := slices.Clone(list)
	seen := make(map[string]bool, len(out)+len(values))
	for _, v := range out {
		if b, err := MarshalJSON(v); err == nil {
			seen[string(b)] = true
		}
	}
	for _, v := range values {
		b, err := MarshalJSON(v)
		if err == nil && seen[string(b)] {
			continue
		}
		seen[string(b)] = true
		out = append(out, v)
	}
	return out
}

// prevIDOf is the id of the chain's last step (the chain's result).
func prevIDOf(prepared []Signature) string {
	if len(prepared) == 0 {
		return ""
	}
	return prepared[0].ID()
}

// descend is chord._descend: how many completions a header element contributes.
func descend(s Signature, depth int) (int, error) {
	if depth > maxCanvasDepth {
		return 0, errors.New("protocol: canvas nested too deeply")
	}
	switch s.Type() {
	case SubtaskGroup:
		items, err := signatureItems(s.Kwargs["tasks"])
		if err != nil {
			return 0, err
		}
		n := 0
		for _, it := range items {
			d, err := descend(it, depth+1)
			if err != nil {
				return 0, err
			}
			n += d
		}
		return n, nil
	case SubtaskChain:
		items, err := signatureItems(s.Kwargs["tasks"])
		if err != nil {
			return 0, err
		}
		for j := len(items) - 1; j >= 0; j-- {
			d, err := descend(items[j], depth+1)
			if err != nil {
				return 0, err
			}
			if d > 0 {
				return d, nil
			}
		}
		return 0, nil
	case SubtaskChord:
		b, err := toSignature(s.Kwargs["body"])
		if err != nil {
			return 0, err
		}
		return descend(b, depth+1)
	}
	return 1, nil
}

// toSignature accepts a Signature, a *Signature or a decoded signature dict.
func toSignature(v any) (Signature, error) {
	switch s := v.(type) {
	case Signature:
		return s, nil
	case *Signature:
		if s == nil {
			return Signature{}, errors.New("nil signature")
		}
		return *s, nil
	}
	return SignatureFromValue(v)
}

// signatureItems converts a list of signatures (or a single one) to []Signature.
func signatureItems(v any) ([]Signature, error) {
	if v == nil {
		return nil, nil
	}
	list := asList(v)
	out := make([]Signature, 0, len(list))
	for i, it := range list {
		s, err := toSignature(it)
		if err != nil {
			return nil, fmt.Errorf("[%d]: %w", i, err)
		}
		out = append(out, s)
	}
	return out, nil
}

// asList is kombu's maybe_list: a list as it is, anything else as a one-element list.
func asList(v any) []any {
	switch l := v.(type) {
	case nil:
		return nil
	case []any:
		return l
	case []Signature:
		out := make([]any, len(l))
		for i, s := range l {
			out[i] = s
		}
		return out
	}
	return []any{v}
}

func dropNil(m map[string]any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		if v != nil {
			out[k] = v
		}
	}
	return out
}

// outgoingFor is app.send_task + amqp.as_task_v2 for a merged plain signature: the options
// become headers, properties, the embed and the route.
func outgoingFor(s Signature, a *ApplyOptions) (Outgoing, error) {
	o := s.Options
	str := func(k string) string { v, _ := o[k].(string); return v }
	t := &Task{
		Version:    2,
		ID:         str("task_id"),
		Name:       s.Task,
		Args:       s.Args,
		Kwargs:     s.Kwargs,
		Shadow:     str("shadow"),
		RootID:     str("root_id"),
		ParentID:   str("parent_id"),
		Group:      str("group_id"),
		ReplyTo:    str("reply_to"),
		Origin:     a.Origin,
		ArgsRepr:   str("argsrepr"),
		KwargsRepr: str("kwargsrepr"),
		Headers:    map[string]any{},
	}
	if t.Name == "" {
		return Outgoing{}, errors.New("protocol: apply signature: no task name")
	}
	if t.ID == "" {
		t.ID = NewUUID()
	}
	if t.ParentID == "" || t.RootID == "" {
		if a.CurrentID != "" {
			if t.RootID == "" {
				t.RootID = a.CurrentRootID
				if t.RootID == "" {
					t.RootID = a.CurrentID
				}
			}
			if t.ParentID == "" {
				t.ParentID = a.CurrentID
			}
		}
	}
	if v, ok := o["group_index"]; ok && v != nil {
		n, ok := toInt(v)
		if !ok {
			return Outgoing{}, fmt.Errorf("protocol: apply %s: group_index %v is not an integer", t.Name, v)
		}
		t.GroupIndex = &n
	}
	if v, ok := o["retries"]; ok && v != nil {
		n, ok := toInt(v)
		if !ok {
			return Outgoing{}, fmt.Errorf("protocol: apply %s: retries %v is not an integer", t.Name, v)
		}
		t.Retries = n
	}
	if b, ok := o["ignore_result"].(bool); ok {
		t.IgnoreResult = b
	}
	if v, ok := o["priority"]; ok && v != nil {
		n, ok := toInt(v)
		if !ok || n < 0 || n > 255 {
			return Outgoing{}, fmt.Errorf("protocol: apply %s: priority %v is not an integer in 0..255", t.Name, v)
		}
		t.Priority = uint8(n)
	}
	for i, k := range []string{"time_limit", "soft_time_limit"} {
		if v, ok := o[k]; ok && v != nil {
			f, ok := toFloat(v)
			if !ok {
				return Outgoing{}, fmt.Errorf("protocol: apply %s: %s %v is not a number", t.Name, k, v)
			}
			t.TimeLimit[i] = &f
		}
	}
	var err error
	if t.ETA, err = optionTime(o, "countdown", "eta", a.Now); err != nil {
		return Outgoing{}, fmt.Errorf("protocol: apply %s: %w", t.Name, err)
	}
	if t.Expires, err = optionTime(o, "expires", "expires", a.Now); err != nil {
		return Outgoing{}, fmt.Errorf("protocol: apply %s: %w", t.Name, err)
	}
	if h, ok := o["headers"].(map[string]any); ok {
		for k, v := range h {
			t.Headers[k] = v
		}
	}
	// Celery >= 5.3 stamps: the stamped headers travel as headers of their own.
	if sh, ok := o["stamped_headers"].([]any); ok {
		t.Headers["stamped_headers"] = sh
		for _, n := range sh {
			if name, ok := n.(string); ok {
				if v, ok := o[name]; ok {
					t.Headers[name] = v
				}
			}
		}
	}
	if st, ok := o["stamps"]; ok && st != nil {
		t.Headers["stamps"] = st
	}
	if v, ok := o["replaced_task_nesting"]; ok && v != nil {
		t.Headers["replaced_task_nesting"] = v
	}

	var emb Embed
	if emb.Callbacks, err = signatureItems(o["link"]); err != nil {
		return Outgoing{}, fmt.Errorf("protocol: apply %s: link: %w", t.Name, err)
	}
	if emb.Errbacks, err = signatureItems(o["link_error"]); err != nil {
		return Outgoing{}, fmt.Errorf("protocol: apply %s: link_error: %w", t.Name, err)
	}
	if v, ok := o["chain"]; ok && v != nil {
		if emb.Chain, err = signatureItems(v); err != nil {
			return Outgoing{}, fmt.Errorf("protocol: apply %s: chain: %w", t.Name, err)
		}
		if emb.Chain == nil {
			emb.Chain = []Signature{}
		}
	}
	if v, ok := o["chord"]; ok && v != nil {
		c, err := toSignature(v)
		if err != nil {
			return Outgoing{}, fmt.Errorf("protocol: apply %s: chord: %w", t.Name, err)
		}
		emb.Chord = &c
	}
	t.Embed = emb

	og := Outgoing{Task: t, Queue: str("queue"), RoutingKey: str("routing_key")}
	switch ex := o["exchange"].(type) {
	case string:
		og.Exchange = ex
	case map[string]any:
		og.Exchange, _ = ex["name"].(string)
	}
	if q, ok := o["queue"].(map[string]any); ok {
		og.Queue, _ = q["name"].(string)
	}
	return og, nil
}

// optionTime reads a relative option (countdown, or numeric expires: seconds from now) or
// an absolute one (an ISO-8601 string; naive times are UTC).
func optionTime(o map[string]any, relKey, absKey string, now time.Time) (*time.Time, error) {
	if v, ok := o[relKey]; ok && v != nil {
		if f, ok := toFloat(v); ok && (f != 0 || relKey == absKey) {
			t := now.Add(time.Duration(f * float64(time.Second))).UTC()
			return &t, nil
		}
		if _, isNum := toFloat(v); !isNum && relKey != absKey {
			return nil, fmt.Errorf("%s %v is not a number of seconds", relKey, v)
		}
	}
	if v, ok := o[absKey]; ok && v != nil {
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("%s %v is neither a number of seconds nor an ISO-8601 time", absKey, v)
		}
		if s == "" {
			return nil, nil
		}
		t, err := ParseISO8601(s, time.UTC)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", absKey, err)
		}
		return &t, nil
	}
	return nil, nil
}
