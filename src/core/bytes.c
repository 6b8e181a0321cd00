/* bytes.c — explicit little-endian encoding and the byte sink that
 * checkpoint sections are written through. Core, not checkpoint code: every
 * regularizer writes its own state through the sink (docs/checkpoint-format.md). */
#include "core/core.h"

#include <string.h>

static int host_is_le(void)
{
    const uint16_t one = 1;
    unsigned char c;
    memcpy(&c, &one, 1);
    return c == 1;
}

/* ---- encoding ---------------------------------------------------------- */

void ro_ck_le32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

void ro_ck_le64(unsigned char *p, uint64_t v)
{
    ro_ck_le32(p, (uint32_t)v);
    ro_ck_le32(p + 4, (uint32_t)(v >> 32));
}

uint32_t ro_ck_rd32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

uint64_t ro_ck_rd64(const unsigned char *p)
{
    return (uint64_t)ro_ck_rd32(p) | (uint64_t)ro_ck_rd32(p + 4) << 32;
}

double ro_ck_rdf64(const unsigned char *p)
{
    uint64_t bits = ro_ck_rd64(p);
    double v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

void ro_ck_rdfloats(float *dst, const unsigned char *src, size_t n)
{
    size_t i;
    if (host_is_le()) { /* the file's byte order is the host's: one copy */
        memcpy(dst, src, n * sizeof(float));
        return;
    }
    for (i = 0; i < n; i++) {
        uint32_t bits = ro_ck_rd32(src + 4 * i);
        memcpy(&dst[i], &bits, sizeof bits);
    }
}

/* ---- the sink ---------------------------------------------------------- */

void ro_ck_flush(ro_ck_sink *s)
{
    if (s->used && !s->failed && s->write(s->buf, s->used, s->user) != 0)
        s->failed = 1;
    s->used = 0;
}

void ro_ck_put(ro_ck_sink *s, const void *data, size_t n)
{
    const unsigned char *p = data;
    if (s->failed)
        return;
    if (s->crc_on)
        s->crc = ro_crc32(s->crc, p, n);
    s->size += n;
    if (!s->write)
        return;
    while (n) {
        size_t k = s->cap - s->used;
        if (k > n)
            k = n;
        memcpy(s->buf + s->used, p, k);
        s->used += k;
        p += k;
        n -= k;
        if (s->used == s->cap)
            ro_ck_flush(s);
    }
}

void ro_ck_u32(ro_ck_sink *s, uint32_t v)
{
    unsigned char b[4];
    ro_ck_le32(b, v);
    ro_ck_put(s, b, 4);
}

void ro_ck_u64(ro_ck_sink *s, uint64_t v)
{
    unsigned char b[8];
    ro_ck_le64(b, v);
    ro_ck_put(s, b, 8);
}

void ro_ck_f64(ro_ck_sink *s, double v)
{
    uint64_t bits;
    memcpy(&bits, &v, sizeof bits);
    ro_ck_u64(s, bits);
}

void ro_ck_floats(ro_ck_sink *s, const float *f, size_t n)
{
    size_t i;
    if (host_is_le()) {
        ro_ck_put(s, f, n * sizeof(float));
        return;
    }
    for (i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &f[i], sizeof bits);
        ro_ck_u32(s, bits);
    }
}
