/* curves_chart.h — test accuracy per epoch as an SVG line chart, several
 * panels side by side (one per protocol), one line per method, the legend
 * on the right. Each panel's scale follows its curves after the first
 * tenth of training, in steps of 0.01, 0.05 or 0.1 (earlier points are
 * clamped to it), so the differences that matter are visible.
 *
 * Header-only (a static function), for examples/demo.c (one panel) and
 * examples/demo_fashion.c (one panel per protocol). */
#ifndef CURVES_CHART_H
#define CURVES_CHART_H

#include <math.h>
#include <stdio.h>

typedef struct curves_panel {
    const char *title;
    long epochs;
    const double *acc; /* acc[m * stride + e]: method m after epoch e + 1 */
    size_t stride;
} curves_panel;

/* Returns 0, or -1 if the file cannot be written. */
static int write_curves_svg(const char *path, const char *title, int np,
                            const curves_panel *panels, int nm, const char *const *names,
                            const char *const *colors)
{
    const double PW = 420, PH = 340, L = 60, gap = 60, T = 60, Bm = 50, legend = 130;
    const double W = L + np * PW + (np - 1) * gap + legend, H = T + PH + Bm;
    FILE *f = fopen(path, "w");
    int p, m, k;
    if (!f)
        return -1;
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
               "font-family=\"sans-serif\" font-size=\"12\">\n", W, H);
    fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    fprintf(f, "<text x=\"%.0f\" y=\"22\" font-size=\"14\">%s</text>\n", L, title);
    for (p = 0; p < np; p++) {
        const curves_panel *c = &panels[p];
        double lo = 1.0, hi = 0.0, x0 = L + p * (PW + gap), x1 = x0 + PW, y0 = T + PH, y1 = T;
        double step;
        int ticks;
        long e;
        for (m = 0; m < nm; m++)
            for (e = c->epochs / 10; e < c->epochs; e++) {
                double v = c->acc[(size_t)m * c->stride + (size_t)e];
                lo = v < lo ? v : lo;
                hi = v > hi ? v : hi;
            }
        if (hi <= lo)
            hi = lo + 0.01;
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n",
                (x0 + x1) / 2, T - 12, c->title);
        /* a grid line every 0.01, 0.05 or 0.1 */
        step = hi - lo <= 0.06 ? 0.01 : hi - lo <= 0.3 ? 0.05 : 0.1;
        lo = floor(lo / step + 1e-9) * step;
        hi = ceil(hi / step - 1e-9) * step;
        ticks = (int)((hi - lo) / step + 0.5);
        for (k = 0; k <= ticks; k++) { /* horizontal grid and labels */
            double v = lo + (hi - lo) * k / ticks, y = y0 + (y1 - y0) * k / ticks;
            fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" "
                       "stroke=\"#dddddd\"/>\n", x0, y, x1, y);
            fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.3f</text>\n", x0 - 6,
                    y + 4, v);
        }
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"black\"/>\n",
                x0, y0, x1, y0);
        for (k = 0; k <= 4; k++) { /* epoch ticks, where that epoch is drawn */
            long ep = 1 + (c->epochs - 1) * k / 4;
            if (k && ep == 1 + (c->epochs - 1) * (k - 1) / 4)
                continue;
            fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%ld</text>\n",
                    x0 + (x1 - x0) * (c->epochs > 1 ? (double)(ep - 1) / (double)(c->epochs - 1)
                                                    : 0.0), y0 + 16, ep);
        }
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">epoch</text>\n",
                (x0 + x1) / 2, H - 12);
        for (m = 0; m < nm; m++) {
            fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"%s\" points=\"",
                    colors[m], m == 0 ? "3" : "1.5");
            for (e = 0; e < c->epochs; e++) {
                double v = c->acc[(size_t)m * c->stride + (size_t)e];
                double x = x0 + (x1 - x0) * (c->epochs > 1 ? (double)e / (double)(c->epochs - 1)
                                                           : 0.0);
                v = v < lo ? lo : v;
                fprintf(f, "%.1f,%.1f ", x, y0 + (y1 - y0) * (v - lo) / (hi - lo));
            }
            fprintf(f, "\"/>\n");
        }
    }
    for (m = 0; m < nm; m++)
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" fill=\"%s\">%s</text>\n", W - legend + 20,
                T + 18.0 * (m + 1), colors[m], names[m]);
    fprintf(f, "</svg>\n");
    return fclose(f);
}

#endif
