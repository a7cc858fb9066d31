package report

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"html/template"
	"os"
	"path/filepath"
	"strings"
)

// chartJS is Chart.js 4.6.1 (MIT, assets/chart.js.LICENSE.md), vendored from the npm
// registry's package as its single minified UMD file and inlined in every report.
//
//go:embed assets/chart.umd.min.js
var chartJS string

//go:embed assets/chart.js.LICENSE.md
var chartJSLicense string

var page = template.Must(template.New("report").Funcs(template.FuncMap{
	"num":   fmtNum,
	"value": fmtValue,
}).Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>fleet load test: {{.R.Verdict}} ({{.R.Profile}})</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1 .PASS{color:#187a2f} h1 .FAIL{color:#b3261e}
table{border-collapse:collapse;margin:1em 0} td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
td:first-child,th:first-child{text-align:left} .pass{color:#187a2f;font-weight:bold} .fail{color:#b3261e;font-weight:bold}
.chart{margin:1.5em 0} .chart canvas{max-height:340px} .notes li{margin:.3em 0} small{color:#666}
</style></head><body>
<h1>Load test: <span class="{{.R.Verdict}}">{{.R.Verdict}}</span></h1>
<p>Profile <b>{{.R.Profile}}</b> at {{num .R.Multiplier}}× an expected {{num .R.ExpectedRate}} tasks/s for {{num .R.DurationS}} s
(warm-up {{num .R.WarmupS}} s), started {{.R.Started.Format "2006-01-02 15:04:05 MST"}}.<br>
Broker <code>{{.R.Broker}}</code>, results <code>{{.R.Backend}}</code>, queues <code>{{.R.Queues}}</code>, workers: {{.R.Workers}}.</p>

<h2>Criteria</h2>
<table><tr><th>criterion</th><th>measured</th><th>threshold</th><th>result</th></tr>
{{range .R.Criteria}}<tr><td>{{.Name}}{{if .Note}}<br><small>{{.Note}}</small>{{end}}</td><td>{{value .Value .Unit}}</td><td>{{.Op}} {{num .Threshold}} {{.Unit}}</td>
<td class="{{if .Pass}}pass{{else}}fail{{end}}">{{if .Pass}}PASS{{else}}FAIL{{end}}</td></tr>
{{end}}</table>

<h2>Accounting</h2>
<table><tr><th>published</th><th>succeeded</th><th>failed</th><th>dead-lettered</th><th>revoked</th><th>queued</th><th>in flight</th><th>missing</th><th>duplicates</th></tr>
<tr><td>{{.R.Published}}</td><td>{{.R.Succeeded}}</td><td>{{.R.Failed}}</td><td>{{.R.DeadLettered}}</td><td>{{.R.Revoked}}</td><td>{{.R.Queued}}</td><td>{{.R.InFlight}}</td><td>{{.R.Missing}}</td><td>{{.R.Duplicates}}</td></tr></table>
<p><small>Injected on purpose: {{.R.Injected}} ({{.R.InjectedFailures}} failures; the rest retries). Duplicates: {{.R.DuplicatesSource}}.</small></p>

<h2>Latency and throughput</h2>
<table><tr><th></th><th>count</th><th>p50</th><th>p95</th><th>p99</th><th>max</th></tr>
<tr><td>end to end (scheduled send → date_done), s</td><td>{{.R.LatencyS.Count}}</td><td>{{num .R.LatencyS.P50}}</td><td>{{num .R.LatencyS.P95}}</td><td>{{num .R.LatencyS.P99}}</td><td>{{num .R.LatencyS.Max}}</td></tr>
<tr><td>overhead (end to end − the task's own work), s</td><td>{{.R.OverheadS.Count}}</td><td>{{num .R.OverheadS.P50}}</td><td>{{num .R.OverheadS.P95}}</td><td>{{num .R.OverheadS.P99}}</td><td>{{num .R.OverheadS.Max}}</td></tr>
<tr><td>producer lag behind schedule, s</td><td>{{.R.Producer.LagS.Count}}</td><td>{{num .R.Producer.LagS.P50}}</td><td>{{num .R.Producer.LagS.P95}}</td><td>{{num .R.Producer.LagS.P99}}</td><td>{{num .R.Producer.LagS.Max}}</td></tr>
</table>
<p>Sent {{num .R.SentPerS}} tasks/s, completed {{num .R.ThroughputPerS}} tasks/s on average.
{{if .R.Producer.FellBehind}}<b class="fail">The producer fell behind its schedule</b> ({{.R.Producer.Late}} publishes more than 100 ms late): the offered load was lower than planned.{{end}}</p>

{{with .R.Chaos}}{{if or .WorkersKilled .ConnectionCuts .BrokerRestarts .RestartFailures}}<h2>Chaos</h2><ul>
{{range $i, $w := .WorkersKilled}}<li>SIGKILL {{$w}} at {{num (index $.R.Chaos.KillTimesS $i)}} s</li>{{end}}
{{range .ConnectionCuts}}<li>broker connections of the local workers cut at {{num .}} s</li>{{end}}
{{range .BrokerRestarts}}<li>broker restarted at {{num .}} s</li>{{end}}
{{range .RestartFailures}}<li class="fail">broker restart failed: {{.}}</li>{{end}}
</ul>{{end}}{{end}}
<h2>By task class</h2>
<table><tr><th>class</th><th>kind</th><th>task</th><th>published</th><th>succeeded</th><th>failed</th><th>dead-lettered</th><th>injected</th><th>p50 s</th><th>p99 s</th><th>overhead p99 s</th></tr>
{{range .R.Classes}}<tr><td>{{.Name}}</td><td>{{.Kind}}</td><td>{{.Task}}</td><td>{{.Published}}</td><td>{{.Succeeded}}</td><td>{{.Failed}}</td><td>{{.DeadLettered}}</td><td>{{.Injected}}</td><td>{{num .LatencyS.P50}}</td><td>{{num .LatencyS.P99}}</td><td>{{num .OverheadS.P99}}</td></tr>
{{end}}</table>
{{if .R.FailuresByReason}}<h3>Failures by reason</h3><table>{{range $k, $v := .R.FailuresByReason}}<tr><td>{{$k}}</td><td>{{$v}}</td></tr>{{end}}</table>{{end}}
{{if .R.DLQByReason}}<h3>Dead letters by reason</h3><table>{{range $k, $v := .R.DLQByReason}}<tr><td>{{$k}}</td><td>{{$v}}</td></tr>{{end}}</table>{{end}}

<h2>Charts</h2>
{{range .R.Charts}}<div class="chart"><h3>{{.Title}}</h3><canvas id="c-{{.ID}}"></canvas><small>PNG: <a href="{{.ID}}.png">{{.ID}}.png</a></small></div>
{{end}}
{{if .R.Decisions}}<h2>Autoscaler decisions</h2><table><tr><th>time</th><th>current</th><th>desired</th><th>rule</th><th>reason</th></tr>
{{range .R.Decisions}}<tr><td>{{.Time.Format "15:04:05"}}</td><td>{{.Current}}</td><td>{{.Desired}}</td><td>{{.Rule}}</td><td style="text-align:left">{{.Reason}}</td></tr>{{end}}</table>{{end}}
{{if .R.Notes}}<h2>Notes</h2><ul class="notes">{{range .R.Notes}}<li>{{.}}</li>{{end}}</ul>{{end}}
{{if .R.MissingIDs}}<h2>Missing task ids</h2><pre>{{range .R.MissingIDs}}{{.}}
{{end}}</pre>{{end}}
<p><small>Charts drawn with Chart.js, embedded in this file (MIT licence below).</small></p>
<script>{{.ChartJS}}</script>
<script>
const charts = {{.Charts}};
const palette = ["#1f77b4","#d62728","#2ca02c","#ff7f0e","#9467bd","#8c564b","#e377c2","#7f7f7f","#bcbd22","#17becf"];
for (const c of charts) {
  const datasets = c.series.map((s, i) => ({label: s.name, data: (s.points||[]).map(p => ({x: p.t, y: p.v})),
    borderColor: palette[i % palette.length], backgroundColor: palette[i % palette.length], pointRadius: 0, borderWidth: 1.5, tension: 0}));
  if (c.threshold) {
    const xs = c.series.flatMap(s => (s.points||[]).map(p => p.t));
    if (xs.length) datasets.push({label: "threshold", data: [{x: Math.min(...xs), y: c.threshold}, {x: Math.max(...xs), y: c.threshold}],
      borderColor: "#b3261e", borderDash: [6, 4], pointRadius: 0, borderWidth: 1});
  }
  new Chart(document.getElementById("c-" + c.id), {type: "line", data: {datasets},
    options: {animation: false, parsing: false, normalized: true, interaction: {mode: "nearest", intersect: false},
      scales: {x: {type: "linear", title: {display: true, text: "seconds since start"}}, y: {beginAtZero: true, title: {display: true, text: c.y_label}}}}});
}
</script>
<!-- Chart.js licence:
{{.License}}
-->
</body></html>
`))

// WriteHTML writes dir/report.html: the result, its criteria and its charts, self-contained.
func WriteHTML(dir string, r *Result) (string, error) {
	charts, err := json.Marshal(r.Charts)
	if err != nil {
		return "", fmt.Errorf("report: encode charts: %w", err)
	}
	var b strings.Builder
	err = page.Execute(&b, map[string]any{
		"R":       r,
		"ChartJS": template.JS(chartJS),
		"Charts":  template.JS(charts),
		"License": strings.ReplaceAll(chartJSLicense, "--", "- -"),
	})
	if err != nil {
		return "", fmt.Errorf("report: render HTML: %w", err)
	}
	p := filepath.Join(dir, "report.html")
	if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
		return "", fmt.Errorf("report: %w", err)
	}
	return p, nil
}

func fmtNum(v float64) string {
	switch {
	case v == 0:
		return "0"
	case v >= 100 || v <= -100:
		return fmt.Sprintf("%.0f", v)
	case v >= 1 || v <= -1:
		return fmt.Sprintf("%.2f", v)
	}
	return fmt.Sprintf("%.3f", v)
}

func fmtValue(v *float64, unit string) string {
	if v == nil {
		return "not measured"
	}
	return fmtNum(*v) + " " + unit
}
