/* demo_chart.h — the demo's flatness chart, hand-written SVG in the style of
 * its curves charts (curves_chart.h): one row per method and three panels
 * side by side, the
 * mean over seeds of (0) clean test accuracy, (1) worst-case sharpness and
 * (2) the top Hessian eigenvalue at the end of training, each a dot with a
 * +-sd bar and its value. Accuracy keeps the curves chart's scale (steps of
 * 0.05 around the data); the two flatness panels start at 0 (the eigenvalue
 * of largest magnitude can be negative early in training: such a dot is
 * drawn at 0, with its value).
 *
 * Header-only (a static function), for examples/demo.c. */
#ifndef DEMO_CHART_H
#define DEMO_CHART_H

#include <math.h>
#include <stdio.h>

/* A round upper end for a scale from 0: 1, 2 or 5 (or 10) x 10^k, and a
 * number of intervals that gives round ticks (steps of 2, 5 or 1 x 10^j). */
static double demo_chart_nice(double hi, int *ticks)
{
    double p;
    *ticks = 5;
    if (!(hi > 0.0))
        return 1.0;
    p = pow(10.0, floor(log10(hi)));
    if (hi <= p)
        return p;
    if (hi <= 2 * p) {
        *ticks = 4;
        return 2 * p;
    }
    return hi <= 5 * p ? 5 * p : 10 * p;
}

/* mean[m][j], sd[m][j]: panel j of method m (j = 0 accuracy, 1 sharpness,
 * 2 eigenvalue). Returns 0, or -1 if the file cannot be written. */
static int write_flat_svg(const char *path, const char *title, int nm, const char *const *names,
                          const char *const *colors, double mean[][3], double sd[][3],
                          double rho)
{
    const double L = 90, R = 20, T = 70, Bm = 40, row = 30, gap = 30;
    const double W = 780, H = T + row * nm + Bm, pw = (W - L - R - 2 * gap) / 3;
    double lo[3], hi[3];
    int ticks[3];
    char head[3][64];
    FILE *f = fopen(path, "w");
    int j, m, k;
    if (!f)
        return -1;
    snprintf(head[0], sizeof head[0], "clean test accuracy");
    snprintf(head[1], sizeof head[1], "worst-case sharpness (L2, rho %g)", rho);
    snprintf(head[2], sizeof head[2], "top Hessian eigenvalue");
    for (j = 0; j < 3; j++) {
        lo[j] = j == 0 ? 1.0 : 0.0;
        hi[j] = 0.0;
        for (m = 0; m < nm; m++) {
            double a = mean[m][j] - sd[m][j], b = mean[m][j] + sd[m][j];
            lo[j] = j == 0 && a < lo[j] ? a : lo[j];
            hi[j] = b > hi[j] ? b : hi[j];
        }
        if (j == 0) {
            lo[0] = floor(lo[0] * 20.0) / 20.0;
            hi[0] = ceil(hi[0] * 20.0) / 20.0;
            if (hi[0] <= lo[0])
                hi[0] = lo[0] + 0.05;
            ticks[0] = (int)((hi[0] - lo[0]) / 0.05 + 0.5);
            /* steps of 0.025, 0.05 or (when even) 0.1 */
            ticks[0] = ticks[0] <= 3 ? 2 * ticks[0] : ticks[0] > 6 && !(ticks[0] & 1)
                                                          ? ticks[0] / 2 : ticks[0];
        } else {
            hi[j] = demo_chart_nice(hi[j], &ticks[j]);
        }
    }
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
               "font-family=\"sans-serif\" font-size=\"12\">\n", W, H);
    fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    fprintf(f, "<text x=\"%.0f\" y=\"22\" font-size=\"14\">%s</text>\n", 20.0, title);
    for (m = 0; m < nm; m++) /* method names */
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\" fill=\"%s\">%s</text>\n",
                L - 10, T + row * (m + 0.5) + 4, colors[m], names[m]);
    for (j = 0; j < 3; j++) {
        double x0 = L + j * (pw + gap), x1 = x0 + pw, y0 = T + row * nm;
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n",
                (x0 + x1) / 2, T - 24, head[j]);
        for (k = 0; k <= ticks[j]; k++) { /* vertical grid and labels */
            double x = x0 + (x1 - x0) * k / ticks[j], v = lo[j] + (hi[j] - lo[j]) * k / ticks[j];
            fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" "
                       "stroke=\"#dddddd\"/>\n", x, T - 8, x, y0);
            fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%.3g</text>\n", x,
                    y0 + 16, v);
        }
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"black\"/>\n",
                x0, y0, x1, y0);
        for (m = 0; m < nm; m++) {
            double y = T + row * (m + 0.5), s = (x1 - x0) / (hi[j] - lo[j]);
            double xm = x0 + (mean[m][j] - lo[j]) * s;
            double xa = x0 + (mean[m][j] - sd[m][j] - lo[j]) * s;
            double xb = x0 + (mean[m][j] + sd[m][j] - lo[j]) * s;
            xm = xm < x0 ? x0 : xm; /* a negative eigenvalue sits on 0, labelled */
            xa = xa < x0 ? x0 : xa;
            xb = xb > x1 ? x1 : xb < x0 ? x0 : xb;
            fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" "
                       "stroke-width=\"2\"/>\n", xa, y, xb, y, colors[m]);
            fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"5\" fill=\"%s\"/>\n", xm, y,
                    colors[m]);
            fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"10\" "
                       "fill=\"%s\">", xm, y - 8, colors[m]);
            fprintf(f, j == 0 ? "%.4f</text>\n" : "%.3g</text>\n", mean[m][j]);
        }
    }
    fprintf(f, "</svg>\n");
    return fclose(f);
}

#endif
