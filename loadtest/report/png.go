package report

import (
	"fmt"
	"image/color"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

var pngPalette = []color.Color{
	color.RGBA{0x1f, 0x77, 0xb4, 0xff}, color.RGBA{0xd6, 0x27, 0x28, 0xff}, color.RGBA{0x2c, 0xa0, 0x2c, 0xff},
	color.RGBA{0xff, 0x7f, 0x0e, 0xff}, color.RGBA{0x94, 0x67, 0xbd, 0xff}, color.RGBA{0x8c, 0x56, 0x4b, 0xff},
	color.RGBA{0xe3, 0x77, 0xc2, 0xff}, color.RGBA{0x7f, 0x7f, 0x7f, 0xff}, color.RGBA{0xbc, 0xbd, 0x22, 0xff},
	color.RGBA{0x17, 0xbe, 0xcf, 0xff},
}

// WritePNGs draws every chart of r as dir/<chart id>.png and returns the paths.
func WritePNGs(dir string, r *Result) ([]string, error) {
	var paths []string
	for _, c := range r.Charts {
		p := plot.New()
		p.Title.Text = c.Title
		p.X.Label.Text = "seconds since start"
		p.Y.Label.Text = c.YLabel
		p.Y.Min = 0
		p.Legend.Top = true
		p.Legend.Left = true
		p.Add(plotter.NewGrid())
		var xmin, xmax, ymax float64
		first := true
		for i, s := range c.Series {
			if len(s.Points) == 0 {
				continue
			}
			xy := make(plotter.XYs, len(s.Points))
			for j, pt := range s.Points {
				xy[j].X, xy[j].Y = pt.T, pt.V
				ymax = max(ymax, pt.V)
				if first || pt.T < xmin {
					xmin = pt.T
				}
				if first || pt.T > xmax {
					xmax = pt.T
				}
				first = false
			}
			l, err := plotter.NewLine(xy)
			if err != nil {
				return paths, fmt.Errorf("report: chart %s series %s: %w", c.ID, s.Name, err)
			}
			l.Color = pngPalette[i%len(pngPalette)]
			l.Width = vg.Points(1.2)
			p.Add(l)
			p.Legend.Add(s.Name, l)
		}
		if c.Threshold > 0 && !first {
			l, err := plotter.NewLine(plotter.XYs{{X: xmin, Y: c.Threshold}, {X: xmax, Y: c.Threshold}})
			if err == nil {
				l.Color = color.RGBA{0xb3, 0x26, 0x1e, 0xff}
				l.Dashes = []vg.Length{vg.Points(6), vg.Points(4)}
				p.Add(l)
				p.Legend.Add("threshold", l)
			}
		}
		// Head room above the data for the legend.
		p.Y.Max = max(ymax, c.Threshold) * 1.35
		if p.Y.Max == 0 {
			p.Y.Max = 1
		}
		if first { // no data: an empty chart that says so
			p.Title.Text += " (no data)"
		}
		p.Legend.ThumbnailWidth = vg.Points(20)
		p.Legend.Padding = vg.Points(2)
		path := filepath.Join(dir, c.ID+".png")
		if err := p.Save(9*vg.Inch, 4*vg.Inch, path); err != nil {
			return paths, fmt.Errorf("report: save %s: %w", path, err)
		}
		paths = append(paths, path)
	}
	return paths, nil
}
