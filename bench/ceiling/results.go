package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// resultExpires is Celery's default result_expires (1 day), the SETEX TTL.
const resultExpires = 86400

// resultWriter stores SUCCESS results the way Celery's Redis result backend does.
type resultWriter struct {
	client *goredis.Client
}

func newResultWriter(ctx context.Context, url string) (*resultWriter, error) {
	opt, err := goredis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("result backend URL: %w", err)
	}
	c := goredis.NewClient(opt)
	if err := c.Ping(ctx).Err(); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("result backend ping: %w", err)
	}
	return &resultWriter{client: c}, nil
}

func (w *resultWriter) Close() error { return w.client.Close() }

// store writes a SUCCESS result for every id: one pipeline of GETs (Celery 5.2 skips the
// write when the stored status is already SUCCESS), then one pipeline with a
// MULTI SETEX PUBLISH EXEC block per task.
func (w *resultWriter) store(ctx context.Context, ids []string) error {
	gets := make([]*goredis.StringCmd, len(ids))
	p := w.client.Pipeline()
	for i, id := range ids {
		gets[i] = p.Get(ctx, "celery-task-meta-"+id)
	}
	if _, err := p.Exec(ctx); err != nil && !errors.Is(err, goredis.Nil) {
		return fmt.Errorf("results: get: %w", err)
	}
	p = w.client.Pipeline()
	date := time.Now().UTC().Format("2006-01-02T15:04:05.000000")
	for i, id := range ids {
		if gets[i].Err() == nil && strings.Contains(gets[i].Val(), `"status": "SUCCESS"`) {
			continue
		}
		key := "celery-task-meta-" + id
		doc := `{"status": "SUCCESS", "result": null, "traceback": null, "children": [], "date_done": "` +
			date + `", "task_id": ` + strconv.Quote(id) + `}`
		p.Do(ctx, "MULTI")
		p.Do(ctx, "SETEX", key, resultExpires, doc)
		p.Do(ctx, "PUBLISH", key, doc)
		p.Do(ctx, "EXEC")
	}
	if p.Len() == 0 {
		return nil
	}
	cmds, err := p.Exec(ctx)
	if err != nil {
		return fmt.Errorf("results: store %d: %w", len(cmds)/4, err)
	}
	return nil
}
