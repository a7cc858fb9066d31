package flags

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Collector exposes a worker's flags to Prometheus, read from a Snapshot on every scrape:
//
//	fleet_flag_enabled{flag}             1 or 0, Bool flags only
//	fleet_flag_value{flag}               the value as a number (Bool: 1/0), every flag
//	fleet_flag_changes_total             effective changes applied since the worker started
//	fleet_flag_rejections_total{source}  bad values rejected, per source
//	fleet_flag_source_healthy{source}    1 when the source's last read succeeded
type Collector struct {
	snap                                        func() Snapshot
	enabled, value, changes, rejections, health *prometheus.Desc
}

// NewCollector returns a collector reading snap (e.g. (*Flags).Snapshot) on every scrape;
// constLabels (e.g. the worker's hostname label) go on every series and may be nil.
func NewCollector(snap func() Snapshot, constLabels prometheus.Labels) *Collector {
	return &Collector{
		snap:       snap,
		enabled:    prometheus.NewDesc("fleet_flag_enabled", "1 when the feature flag is on (Bool flags).", []string{"flag"}, constLabels),
		value:      prometheus.NewDesc("fleet_flag_value", "Effective value of the feature flag as a number (Bool: 1/0).", []string{"flag"}, constLabels),
		changes:    prometheus.NewDesc("fleet_flag_changes_total", "Changes of effective feature flag values or sources applied by this worker.", nil, constLabels),
		rejections: prometheus.NewDesc("fleet_flag_rejections_total", "Bad feature flag values rejected (the last good value stayed), by source.", []string{"source"}, constLabels),
		health:     prometheus.NewDesc("fleet_flag_source_healthy", "1 when the last read of the flag source succeeded.", []string{"source"}, constLabels),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.enabled, c.value, c.changes, c.rejections, c.health} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	s := c.snap()
	for _, st := range s.Flags {
		if st.Kind == Bool {
			ch <- prometheus.MustNewConstMetric(c.enabled, prometheus.GaugeValue, st.Number(), st.Name)
		}
		ch <- prometheus.MustNewConstMetric(c.value, prometheus.GaugeValue, st.Number(), st.Name)
	}
	ch <- prometheus.MustNewConstMetric(c.changes, prometheus.CounterValue, float64(s.Changes))
	for _, src := range s.Sources {
		ch <- prometheus.MustNewConstMetric(c.rejections, prometheus.CounterValue, float64(src.Rejections), string(src.Source))
		h := 1.0
		if src.LastError != "" {
			h = 0
		}
		ch <- prometheus.MustNewConstMetric(c.health, prometheus.GaugeValue, h, string(src.Source))
	}
}
