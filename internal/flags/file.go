package flags

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// maxFileSize bounds one flag file or the YAML file.
const maxFileSize = 1 << 20

// fileWatcher re-reads the file source every FilePoll and applies what changed.
type fileWatcher struct {
	f    *Flags
	path string
	last map[string]string // last applied content; nil before the first good read
}

func (w *fileWatcher) run(ctx context.Context) {
	t := time.NewTicker(w.f.opts.FilePoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			w.poll()
		}
	}
}

// poll reads the source; an unreadable source keeps the last good values.
func (w *fileWatcher) poll() {
	vals, err := readFileSource(w.path)
	if err != nil {
		w.f.sourceError(SourceFile, err)
		return
	}
	w.f.sourceLoaded(SourceFile)
	if w.last != nil && maps.Equal(w.last, vals) {
		return
	}
	w.last = vals
	w.f.apply(SourceFile, vals)
}

// readFileSource reads a directory of one file per key (a mounted ConfigMap: hidden entries
// such as ..data are skipped, symlinks followed) or a YAML mapping of KEY: value, optionally
// under a top-level "flags:" key. A path that does not exist is an empty source.
func readFileSource(path string) (map[string]string, error) {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]string{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("flags file: %w", err)
	}
	if fi.IsDir() {
		return readFlagDir(path)
	}
	data, err := readLimited(path)
	if err != nil {
		return nil, err
	}
	return parseFlagYAML(path, data)
}

func readFlagDir(dir string) (map[string]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("flags dir: %w", err)
	}
	out := map[string]string{}
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") {
			continue
		}
		p := filepath.Join(dir, name)
		fi, err := os.Stat(p) // follows the ConfigMap's symlinks
		if errors.Is(err, fs.ErrNotExist) {
			continue // a dangling link during a ConfigMap swap
		}
		if err != nil {
			return nil, fmt.Errorf("flags dir: %w", err)
		}
		if !fi.Mode().IsRegular() {
			continue
		}
		data, err := readLimited(p)
		if err != nil {
			return nil, err
		}
		out[name] = strings.TrimSpace(string(data))
	}
	return out, nil
}

func readLimited(path string) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("flags file: %w", err)
	}
	defer fh.Close()
	data, err := io.ReadAll(io.LimitReader(fh, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("flags file %s: %w", path, err)
	}
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("flags file %s: larger than %d bytes", path, maxFileSize)
	}
	return data, nil
}

// parseFlagYAML parses KEY: value pairs; a null value leaves the key unset. Errors name the
// file and line.
func parseFlagYAML(name string, data []byte) (map[string]string, error) {
	out := map[string]string{}
	var doc yaml.Node
	if err := yaml.NewDecoder(bytes.NewReader(data)).Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		return nil, fmt.Errorf("flags file %s: %w", name, err)
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return out, nil
	}
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("flags file %s:%d: must be a mapping of flag name to value", name, root.Line)
	}
	if len(root.Content) == 2 && root.Content[0].Value == "flags" {
		root = root.Content[1]
		if root.Kind != yaml.MappingNode {
			return nil, fmt.Errorf("flags file %s:%d: flags: must be a mapping of flag name to value", name, root.Line)
		}
	}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		if v.Kind != yaml.ScalarNode {
			return nil, fmt.Errorf("flags file %s:%d: %s: must be a plain value", name, v.Line, k.Value)
		}
		if v.Tag == "!!null" {
			continue
		}
		out[k.Value] = v.Value
	}
	return out, nil
}
