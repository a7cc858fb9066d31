package otlphttp

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// The environment variables New reads; the signal-specific one of each pair wins.
const (
	envEndpoint          = "OTEL_EXPORTER_OTLP_ENDPOINT"
	envTracesEndpoint    = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
	envHeaders           = "OTEL_EXPORTER_OTLP_HEADERS"
	envTracesHeaders     = "OTEL_EXPORTER_OTLP_TRACES_HEADERS"
	envTimeout           = "OTEL_EXPORTER_OTLP_TIMEOUT"
	envTracesTimeout     = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"
	envCompression       = "OTEL_EXPORTER_OTLP_COMPRESSION"
	envTracesCompression = "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION"
	envCA                = "OTEL_EXPORTER_OTLP_CERTIFICATE"
	envTracesCA          = "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE"
	envClientCert        = "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"
	envTracesClientCert  = "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE"
	envClientKey         = "OTEL_EXPORTER_OTLP_CLIENT_KEY"
	envTracesClientKey   = "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY"

	defaultTimeout = 10 * time.Second
	tracesPath     = "/v1/traces"
)

// config is what the environment says.
type config struct {
	endpoint string // full URL of the traces endpoint
	header   http.Header
	timeout  time.Duration
	gzip     bool
	tls      *tls.Config // nil: the default
}

// lookup returns the first of the variables that is set (after trimming) and its name.
func lookup(getenv func(string) string, names ...string) (value, name string) {
	for _, n := range names {
		if v := strings.TrimSpace(getenv(n)); v != "" {
			return v, n
		}
	}
	return "", names[len(names)-1]
}

func readConfig(getenv func(string) string) (config, error) {
	var cfg config
	var err error
	if cfg.endpoint, err = endpoint(getenv); err != nil {
		return cfg, err
	}

	cfg.header = http.Header{}
	cfg.header.Set("User-Agent", userAgent)
	if v, name := lookup(getenv, envTracesHeaders, envHeaders); v != "" {
		if err := parseHeaders(cfg.header, v, name); err != nil {
			return cfg, err
		}
	}
	cfg.header.Set("Content-Type", "application/x-protobuf")

	cfg.timeout = defaultTimeout
	if v, name := lookup(getenv, envTracesTimeout, envTimeout); v != "" {
		ms, err := strconv.ParseInt(v, 10, 64)
		if err != nil || ms <= 0 || ms > int64(time.Duration(1<<63-1)/time.Millisecond) {
			return cfg, fmt.Errorf("otlphttp: %s=%q: want a positive number of milliseconds", name, v)
		}
		cfg.timeout = time.Duration(ms) * time.Millisecond
	}

	if v, name := lookup(getenv, envTracesCompression, envCompression); v != "" {
		switch strings.ToLower(v) {
		case "gzip":
			cfg.gzip = true
			cfg.header.Set("Content-Encoding", "gzip")
		case "none":
		default:
			return cfg, fmt.Errorf("otlphttp: %s=%q: want gzip or none", name, v)
		}
	}

	if cfg.tls, err = tlsConfig(getenv); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// endpoint is the URL spans are posted to.
func endpoint(getenv func(string) string) (string, error) {
	if v := strings.TrimSpace(getenv(envTracesEndpoint)); v != "" {
		u, err := parseURL(envTracesEndpoint, v)
		if err != nil {
			return "", err
		}
		if u.Path == "" {
			u.Path = "/"
		}
		return u.String(), nil
	}
	v := strings.TrimSpace(getenv(envEndpoint))
	if v == "" {
		return "", errors.New("otlphttp: no endpoint: set " + envTracesEndpoint + " or " + envEndpoint)
	}
	u, err := parseURL(envEndpoint, v)
	if err != nil {
		return "", err
	}
	if u.RawPath != "" {
		u.RawPath = strings.TrimRight(u.RawPath, "/") + tracesPath
	}
	u.Path = strings.TrimRight(u.Path, "/") + tracesPath
	return u.String(), nil
}

func parseURL(name, v string) (*url.URL, error) {
	u, err := url.Parse(v)
	if err != nil {
		return nil, fmt.Errorf("otlphttp: %s=%q: %w", name, v, err)
	}
	switch strings.ToLower(u.Scheme) {
	case "http", "https":
	default:
		return nil, fmt.Errorf("otlphttp: %s=%q: want an http:// or https:// URL", name, v)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("otlphttp: %s=%q: no host", name, v)
	}
	return u, nil
}

// parseHeaders adds the k=v,k2=v2 list in v (values percent-decoded, whitespace trimmed)
// to h. Empty entries are skipped.
func parseHeaders(h http.Header, v, name string) error {
	for entry := range strings.SplitSeq(v, ",") {
		if strings.TrimSpace(entry) == "" {
			continue
		}
		k, val, ok := strings.Cut(entry, "=")
		k = strings.TrimSpace(k)
		if !ok || !validHeaderKey(k) {
			return fmt.Errorf("otlphttp: %s: malformed entry %q: want key=value", name, entry)
		}
		dec, err := url.PathUnescape(val)
		if err != nil {
			return fmt.Errorf("otlphttp: %s: entry %q: %w", name, entry, err)
		}
		dec = strings.TrimSpace(dec)
		if !validHeaderValue(dec) {
			return fmt.Errorf("otlphttp: %s: entry %q: invalid header value", name, entry)
		}
		h.Set(k, dec)
	}
	return nil
}

// validHeaderKey reports whether k is an RFC 9110 token.
func validHeaderKey(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// validHeaderValue rejects control characters other than horizontal tab.
func validHeaderValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

// tlsConfig builds the TLS settings from the certificate variables; nil when none is set.
func tlsConfig(getenv func(string) string) (*tls.Config, error) {
	var cfg *tls.Config
	if file, name := lookup(getenv, envTracesCA, envCA); file != "" {
		pem, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("otlphttp: %s: %w", name, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("otlphttp: %s: no PEM certificate in %s", name, file)
		}
		cfg = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}

	certName, keyName := envTracesClientCert, envTracesClientKey
	cert, key := strings.TrimSpace(getenv(certName)), strings.TrimSpace(getenv(keyName))
	if cert == "" && key == "" {
		certName, keyName = envClientCert, envClientKey
		cert, key = strings.TrimSpace(getenv(certName)), strings.TrimSpace(getenv(keyName))
	}
	switch {
	case cert == "" && key == "":
		return cfg, nil
	case cert == "":
		return nil, fmt.Errorf("otlphttp: %s is set but %s is not", keyName, certName)
	case key == "":
		return nil, fmt.Errorf("otlphttp: %s is set but %s is not", certName, keyName)
	}
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return nil, fmt.Errorf("otlphttp: %s=%s, %s=%s: %w", certName, cert, keyName, key, err)
	}
	if cfg == nil {
		cfg = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	cfg.Certificates = []tls.Certificate{pair}
	return cfg, nil
}
